"""What a host sees of recommendation inference: the table rows each request reads.

Even with features encrypted and the computation in an enclave, the embedding rows a request
touches are visible to whoever watches memory. :func:`record` turns on recengine's access
hook for every lookup path of the package (tables, collections, the functional ops, the
``recengine.nn`` modules on the core, and so the models and the serving engine built on them)
and collects each lookup as an :class:`Access`: which table, which rows in the order read, the
bag sizes, and the request it belongs to (:meth:`Recorder.request` tags them). With no
recorder active the hook costs a lookup one test of an empty list.

Example::

    >>> import numpy as np
    >>> import recengine as rc
    >>> t = rc.EmbeddingTable(np.ones((10, 4), dtype=np.float32))
    >>> with record() as rec:
    ...     rec.name(t, "items")
    ...     with rec.request("alice"):
    ...         _ = t.lookup(np.array([3, 1, 3]), lengths=np.array([2, 1]))
    >>> a = rec.accesses[0]
    >>> a.request, a.table, a.rows.tolist(), a.lengths.tolist()
    ('alice', 'items', [3, 1, 3], [2, 1])
    >>> rec.rows_by_request()["alice"]["items"].tolist()
    [3, 1, 3]
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Hashable, Iterator, Optional

import numpy as np

from .. import _access

__all__ = ["Access", "Recorder", "record"]


@dataclass(frozen=True)
class Access:
    """One lookup as the host sees it: ``rows`` ``[L]`` int64 in the order read, grouped in
    bags of ``lengths`` ``[B]``, from ``table``, for ``request`` (None outside
    :meth:`Recorder.request`)."""

    request: Optional[Hashable]
    table: str
    rows: np.ndarray
    lengths: np.ndarray


class Recorder:
    """The accesses of the lookups made while it is active (:func:`record`).

    Tables are named by :meth:`name`, else by the label their lookup path gives (a
    collection's table name), else ``"table0"``, ``"table1"`` ... in the order first read.
    """

    def __init__(self) -> None:
        self.accesses: list[Access] = []
        self._names: dict[int, str] = {}
        self._keep: list[Any] = []  # the named objects, so their ids stay theirs
        self._lock = threading.Lock()
        self._local = threading.local()

    def name(self, table: Any, label: str) -> None:
        """Call ``table`` (a table, collection member, array or weight tensor) ``label``."""
        with self._lock:
            self._names[id(table)] = str(label)
            self._keep.append(table)

    @contextmanager
    def request(self, tag: Hashable) -> Iterator[None]:
        """Tag the lookups this thread makes inside the block as request ``tag``."""
        before = getattr(self._local, "tag", None)
        self._local.tag = tag
        try:
            yield
        finally:
            self._local.tag = before

    def note(self, table: Any, indices: Any, offsets: Any, lengths: Any,
             include_last_offset: bool, label: Optional[str]) -> None:
        """Record one lookup (called by the access hook)."""
        rows, bags = _access.rows_and_lengths(indices, offsets, lengths, include_last_offset)
        with self._lock:
            name = self._names.get(id(table))
            if name is None:
                name = label or f"table{len(self._names)}"
                self._names[id(table)] = name
                self._keep.append(table)
            self.accesses.append(Access(getattr(self._local, "tag", None), name, rows, bags))

    def rows_by_request(self) -> dict[Optional[Hashable], dict[str, np.ndarray]]:
        """Each request's rows by table, in the order read (lookups concatenated)."""
        out: dict[Optional[Hashable], dict[str, list[np.ndarray]]] = {}
        for a in self.accesses:
            out.setdefault(a.request, {}).setdefault(a.table, []).append(a.rows)
        return {r: {t: np.concatenate(v) for t, v in tables.items()}
                for r, tables in out.items()}

    def clear(self) -> None:
        """Forget the accesses (names are kept)."""
        with self._lock:
            self.accesses.clear()


@contextmanager
def record(recorder: Optional[Recorder] = None) -> Iterator[Recorder]:
    """Record every lookup made inside the block (from any thread) into ``recorder`` (a new
    one by default), and give it."""
    rec = recorder or Recorder()
    _access.RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _access.RECORDERS.remove(rec)
