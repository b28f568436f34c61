"""The lookups a recommendation model makes for MovieLens users, served through recengine so
that the access hook sees them: the traces the attacks read.

:func:`static_tables` builds one embedding table per static user feature (rows: the
feature's vocabulary) as an :class:`~recengine.EmbeddingCollection`; :func:`serve_static`
serves each user's request (one bag of one row per feature) and returns what a host saw.

Example::

    >>> from recengine.privacy.movielens import load_movielens
    >>> ml = load_movielens()  # doctest: +SKIP
    >>> seen = serve_static(ml, static_tables(ml))  # doctest: +SKIP
    >>> from recengine.privacy import identify
    >>> identify(seen, ["age", "gender", "occupation"]).one_anonymous  # doctest: +SKIP
    326
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import numpy as np

from ..collection import EmbeddingCollection
from ..table import EmbeddingTable
from .movielens import STATIC_FEATURES, MovieLens
from .trace import record

__all__ = ["serve_static", "static_tables"]


def static_tables(data: MovieLens, dim: int = 16, features: Sequence[str] = STATIC_FEATURES,
                  seed: int = 0) -> tuple[EmbeddingCollection, tuple[str, ...]]:
    """A collection with one random ``[vocabulary, dim]`` table per static feature, and the
    features in its order."""
    rng = np.random.default_rng(seed)
    unknown = [f for f in features if f not in data.static]
    if unknown:
        raise ValueError(f"unknown static features {unknown}; expected some of "
                         f"{', '.join(data.static)}")
    tables = [EmbeddingTable(rng.standard_normal((len(data.vocab[f]), dim), dtype=np.float32))
              for f in features]
    return EmbeddingCollection(tables), tuple(features)


def serve_static(data: MovieLens, model: tuple[EmbeddingCollection, tuple[str, ...]],
                 users: Optional[Sequence[int]] = None
                 ) -> dict[Optional[Hashable], dict[str, np.ndarray]]:
    """Serve one request per user (index into ``data.user_ids``; default all): a lookup of
    its static features in ``model``; the rows each request read, by feature, as a host saw
    them."""
    collection, features = model
    order = range(data.num_users) if users is None else users
    one = np.ones(1, dtype=np.int64)
    with record() as rec:
        for f, t in zip(features, collection.tables):
            rec.name(t, f)
        for u in order:
            with rec.request(int(data.user_ids[u])):
                collection.lookup([data.static[f][u:u + 1] for f in features],
                                  lengths=[one] * len(features))
    return rec.rows_by_request()
