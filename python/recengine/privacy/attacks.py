"""The access-pattern attacks, each a function over what a host sees: the rows each request
reads (:meth:`~.trace.Recorder.rows_by_request`), never the raw data.

* :func:`identify`: users bucketed by the rows their static features read (k-anonymity of the
  feature combination): how many buckets, their sizes, how many users are alone in theirs.

Example::

    >>> import numpy as np
    >>> seen = {"u1": {"age": np.array([3]), "sex": np.array([0])},
    ...         "u2": {"age": np.array([3]), "sex": np.array([0])},
    ...         "u3": {"age": np.array([5]), "sex": np.array([1])}}
    >>> r = identify(seen, ["age", "sex"])
    >>> r.buckets, r.one_anonymous, r.users
    (2, 1, 3)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["Identification", "identify"]

#: What the attacks read: per request, per table, the rows read in order.
Seen = Mapping[Optional[Hashable], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Identification:
    """Users bucketed by their static features' rows.

    Attributes:
        tables: the tables whose rows form a bucket's key.
        users: requests bucketed.
        buckets: distinct keys.
        one_anonymous: users alone in their bucket.
        sizes: bucket size -> how many buckets have it.
    """

    tables: tuple[str, ...]
    users: int
    buckets: int
    one_anonymous: int
    sizes: dict[int, int]

    @property
    def one_anonymous_share(self) -> float:
        return self.one_anonymous / self.users if self.users else 0.0


def identify(seen: Seen, tables: Sequence[str]) -> Identification:
    """Bucket every request of ``seen`` by the rows it read from ``tables`` (in order; a
    request that did not read a table has an empty key part there)."""
    if not tables:
        raise ValueError("identification needs at least one table")
    keys = Counter(
        tuple(tuple(np.asarray(rows.get(t, ())).tolist()) for t in tables)
        for rows in seen.values())
    users = sum(keys.values())
    sizes = Counter(keys.values())
    return Identification(tuple(tables), users, len(keys), sizes.get(1, 0),
                          dict(sorted(sizes.items())))
