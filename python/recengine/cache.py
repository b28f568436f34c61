"""Buffer caches: a few fast slots in front of a slow store of equal-size blobs.

:class:`ExpertCache` keeps the parameters of some experts of a mixture-of-experts layer in
fast memory (Expert Buffering, arXiv 2303.06182): each batch fetches the experts it routes
to, which makes them resident and pinned until the batch releases them; misses are copied from
the store (RAM, or a memory-mapped file so that experts can live on disk) by the core's
threads. :class:`CachedTable` puts the same cache in front of an embedding table (blobs =
rows), for tables larger than RAM. :func:`simulate` replays an access trace through a cache
without data, for miss-rate studies, with Belady's MIN as the offline bound.

Policies (:data:`POLICIES`): ``"inactive_lifo"`` (the paper's: blobs inactive in the current
batch first, the most recently loaded of them first), ``"lru"``, ``"fifo"``, ``"lfu"`` and
``"belady"`` (needs the future trace: :meth:`ExpertCache.set_future`).

Example::

    >>> import numpy as np
    >>> from recengine.cache import ExpertCache
    >>> experts = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)   # 8 experts of 4 floats
    >>> cache = ExpertCache.from_array(experts, slots=3)
    >>> with cache.batch([5, 1]) as slots:
    ...     cache.view(np.float32, (4,))[slots[0]]
    array([20., 21., 22., 23.], dtype=float32)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from . import _core
from ._convert import I64, as_float32_array, as_index_array, as_int
from ._files import npy_header
from .table import EmbeddingTable

__all__ = ["POLICIES", "CachedTable", "ExpertCache", "simulate"]

#: Eviction policies (see the module's note).
POLICIES: tuple[str, ...] = ("inactive_lifo", "lru", "fifo", "lfu", "belady")

PathLike = Union[str, "os.PathLike[str]"]


def _slots(slots: Any) -> int:
    return as_int(slots, "slots", 1, I64[1])


def _ids(ids: Any) -> np.ndarray:
    a = np.asarray(ids)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got {a.dtype}")
    if a.ndim != 1:
        a = a.reshape(-1)
    return np.ascontiguousarray(a, dtype=np.int64)


class ExpertCache:
    """``slots`` fast slots over a store of equal-size blobs (see the module's note).

    Build with :meth:`from_array`, :meth:`from_file` or :meth:`from_table`. Thread-safe:
    concurrent batches share the slots; a batch waits (up to ``wait_s``) while others pin the
    slots it needs. A batch with more distinct ids than slots raises ValueError; split it with
    :meth:`rounds`.
    """

    def __init__(self, core: Any, item_shape: tuple[int, ...] = (), dtype: Any = np.uint8
                 ) -> None:
        self._c = core
        self._shape = tuple(item_shape)
        self._dtype = np.dtype(dtype)

    @classmethod
    def from_array(cls, blobs: np.ndarray, slots: int, policy: str = "inactive_lifo",
                   wait_s: float = 30.0) -> ExpertCache:
        """A cache over ``blobs`` ``[N, ...]`` (blob ``i`` = ``blobs[i]``, copied once into
        the store).

        Example::

            >>> ExpertCache.from_array(np.zeros((10, 3)), slots=2).num_blobs
            10
        """
        a = np.asarray(blobs)
        if a.ndim < 1 or a.shape[0] < 1:
            raise ValueError("blobs needs at least one blob ([N, ...])")
        if a.dtype.hasobject:
            raise TypeError("blobs must hold plain values, not Python objects")
        a = np.ascontiguousarray(a)
        raw = a.reshape(a.shape[0], -1).view(np.uint8).reshape(a.shape[0], -1)
        core = _core.BlobCache.from_array(raw, _slots(slots), policy, float(wait_s))
        return cls(core, a.shape[1:], a.dtype)

    @classmethod
    def from_file(cls, path: PathLike, num_blobs: int, item_shape: Sequence[int], dtype: Any,
                  slots: int, policy: str = "inactive_lifo", offset: int = 0,
                  wait_s: float = 30.0) -> ExpertCache:
        """A cache over ``num_blobs`` blobs of ``item_shape`` ``dtype`` stored back to back
        from byte ``offset`` of the file ``path`` (memory-mapped read-only: blobs stay on
        disk until missed). For ``np.save`` files, :meth:`from_npy` reads all of that."""
        dt = np.dtype(dtype)
        blob = int(np.prod(item_shape, dtype=np.int64)) * dt.itemsize
        num_blobs = as_int(num_blobs, "num_blobs", 0, I64[1])
        core = _core.BlobCache.from_file(os.fspath(path), num_blobs,
                                         blob, _slots(slots), policy,
                                         as_int(offset, "offset", 0, I64[1]), float(wait_s))
        return cls(core, tuple(int(s) for s in item_shape), dt)

    @classmethod
    def from_npy(cls, path: PathLike, slots: int, policy: str = "inactive_lifo",
                 wait_s: float = 30.0) -> ExpertCache:
        """A cache over the blobs ``arr[i]`` of an ``.npy`` file of ``arr`` ``[N, ...]``,
        memory-mapped (blobs stay on disk until missed).

        Example::

            >>> import tempfile
            >>> path = os.path.join(tempfile.mkdtemp(), "experts.npy")
            >>> np.save(path, np.zeros((16, 64, 32), np.float32))
            >>> ExpertCache.from_npy(path, slots=4).num_blobs
            16
        """
        head = npy_header(path)
        if not head.shape or (head.fortran_order and len(head.shape) > 1) \
                or head.dtype.hasobject:
            raise ValueError(f"{os.fspath(path)!r} does not hold a C-ordered array [N, ...]")
        return cls.from_file(path, head.shape[0], head.shape[1:], head.dtype, slots, policy,
                             head.offset, wait_s)

    @classmethod
    def from_table(cls, table: EmbeddingTable, slots: int, policy: str = "lru",
                   wait_s: float = 30.0) -> ExpertCache:
        """A cache of ``slots`` rows of ``table`` (raw stored rows; shared, not copied)."""
        return cls(_core.BlobCache.from_table(table._t, _slots(slots), policy, float(wait_s)),
                   (table.row_bytes,), np.uint8)

    @property
    def num_slots(self) -> int:
        return int(self._c.num_slots)

    @property
    def num_blobs(self) -> int:
        return int(self._c.num_blobs)

    @property
    def blob_bytes(self) -> int:
        return int(self._c.blob_bytes)

    @property
    def policy(self) -> str:
        return str(self._c.policy)

    def fetch(self, ids: Any) -> np.ndarray:
        """Make ``ids`` resident and pinned; returns each id's slot (int64, same order).

        Raises:
            IndexError: an id outside ``[0, num_blobs)``.
            ValueError: more distinct ids than slots, or slots pinned by other batches for
                longer than ``wait_s``.
        """
        return self._c.fetch(_ids(ids))

    def release(self, ids: Any) -> None:
        """Unpin a fetched batch's ids (ValueError for ids not fetched)."""
        self._c.release(_ids(ids))

    @contextmanager
    def batch(self, ids: Any) -> Iterator[np.ndarray]:
        """``fetch(ids)`` for the ``with`` block, released at its end."""
        ids = _ids(ids)
        slots = self.fetch(ids)
        try:
            yield slots
        finally:
            self.release(ids)

    def rounds(self, ids: Any) -> list[np.ndarray]:
        """``ids``' distinct values in order, cut into rounds of at most ``num_slots``: fetch,
        use and release one round before the next."""
        distinct = list(dict.fromkeys(_ids(ids).tolist()))
        n = self.num_slots
        return [np.array(distinct[i:i + n], dtype=np.int64) for i in range(0, len(distinct), n)]

    def view(self, dtype: Any = None, shape: Optional[Sequence[int]] = None) -> np.ndarray:
        """The slots as a read-only array ``[slots, *shape]`` of ``dtype`` (by default the
        blobs' own), sharing the cache's memory. Read only slots of fetched, unreleased ids."""
        dt = self._dtype if dtype is None else np.dtype(dtype)
        shape = self._shape if shape is None else tuple(shape)
        return self._c.arena().view(dt).reshape(self.num_slots, *shape)

    def stats(self) -> dict[str, float]:
        """hits, misses, evictions, bytes_copied, copy_seconds, batches, miss_rate."""
        return dict(self._c.stats())

    def contents(self) -> list[Optional[int]]:
        return list(self._c.contents())

    def pins(self) -> list[int]:
        return list(self._c.pins())

    def set_future(self, trace: Sequence[Sequence[int]]) -> None:
        """The batches to come, for the ``"belady"`` policy (the next fetch is ``trace[0]``)."""
        self._c.set_future([_ids(b).tolist() for b in trace])

    def __repr__(self) -> str:
        return (f"ExpertCache({self.num_slots} slots of {self.blob_bytes} B over "
                f"{self.num_blobs} blobs, policy={self.policy!r})")


def simulate(policy: str, slots: int, trace: Sequence[Sequence[int]],
             num_ids: Optional[int] = None) -> dict[str, float]:
    """Replay ``trace`` (the ids of each batch) through a cache of ``slots`` slots, each batch
    pinned while it runs, without data: hits, misses, evictions, batches and miss_rate.

    Example::

        >>> simulate("belady", 2, [[0, 1], [2], [0], [1]])["misses"]
        4
    """
    batches = [_ids(b).tolist() for b in trace]
    n = num_ids if num_ids is not None else 1 + max((max(b) for b in batches if b), default=0)
    return dict(_core.simulate_cache(policy, _slots(slots), as_int(n, "n", 0, I64[1]), batches))


class CachedTable:
    """An embedding table read through a hot-row cache of ``slots`` rows: a lookup fetches
    its bag group's distinct rows (copying the misses from the table, which may be memory-
    mapped from disk), pools them from the cache, and releases them. The output equals
    ``table.lookup``'s. Bags are pooled in groups whose distinct rows fit in the cache; a
    single bag with more distinct rows than slots raises ValueError.

    Example::

        >>> t = EmbeddingTable.random(1000, 8)
        >>> c = CachedTable(t, slots=64)
        >>> c.lookup(np.array([1, 2, 2, 9]), lengths=np.array([3, 1])).shape
        (2, 8)
    """

    def __init__(self, table: EmbeddingTable, slots: int, policy: str = "lru",
                 wait_s: float = 30.0) -> None:
        self.table = table
        self.cache = ExpertCache.from_table(table, slots, policy, wait_s)

    def _groups(self, offsets: np.ndarray, indices: np.ndarray) -> list[tuple[int, int]]:
        """Bag ranges ``[b0, b1)`` whose distinct rows fit in the cache."""
        groups, start, seen = [], 0, set()
        n = self.cache.num_slots
        for b in range(len(offsets) - 1):
            rows = set(indices[offsets[b]:offsets[b + 1]].tolist())
            if len(rows) > n:
                raise ValueError(f"bag {b} has {len(rows)} distinct rows, more than the "
                                 f"cache's {n} slots")
            if len(seen | rows) > n:
                groups.append((start, b))
                start, seen = b, set()
            seen |= rows
        groups.append((start, len(offsets) - 1))
        return groups

    def lookup(self, indices: Any, offsets: Any = None, lengths: Any = None,
               weights: Any = None, mode: str = "sum",
               include_last_offset: bool = False) -> np.ndarray:
        """Pool rows into bags (arguments as :meth:`EmbeddingTable.lookup`, 1-D indices);
        returns ``[B, dim]`` float32."""
        idx = as_index_array(indices, "indices")
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D (with offsets or lengths), got shape "
                             f"{idx.shape}")
        idx = idx.astype(np.int64)
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"unknown mode {mode!r}; expected sum, mean or max")
        if (offsets is None) == (lengths is None):
            raise ValueError("give offsets or lengths")
        if lengths is not None:
            lens = as_index_array(lengths, "lengths").astype(np.int64)
            if lens.ndim != 1 or (lens < 0).any():
                raise ValueError("lengths must be 1-D and non-negative")
            bounds = np.concatenate([[0], np.cumsum(lens)])
        else:
            o = as_index_array(offsets, "offsets").astype(np.int64)
            if o.ndim != 1:
                raise ValueError(f"offsets must be 1-D, got shape {o.shape}")
            bounds = o if include_last_offset else np.concatenate([o, [idx.size]])
        if bounds.size == 0 or bounds[0] != 0 or bounds[-1] != idx.size or np.any(
                np.diff(bounds) < 0):
            raise ValueError("offsets/lengths do not describe the indices")
        bad = (idx < 0) | (idx >= self.table.num_rows)
        if bad.any():
            j = int(np.argmax(bad))
            raise IndexError(f"index {idx[j]} at position {j} is out of range for a table of "
                             f"{self.table.num_rows} rows")
        w = None if weights is None else as_float32_array(weights, "per-sample weights")
        if w is not None and w.shape != idx.shape:
            raise ValueError(f"per-sample weights must have the indices' shape {idx.shape}, "
                             f"got {w.shape}")
        out = np.zeros((bounds.size - 1, self.table.dim), dtype=np.float32)
        arena = self.cache._c.arena()
        for b0, b1 in self._groups(bounds, idx):
            lo, hi = int(bounds[b0]), int(bounds[b1])
            part = idx[lo:hi]
            if part.size == 0:
                continue
            distinct, local = np.unique(part, return_inverse=True)
            with self.cache.batch(distinct) as slots:
                out[b0:b1] = _core.pool_array(
                    arena, slots[local], bounds[b0:b1 + 1] - lo, None,
                    None if w is None else w[lo:hi], mode, None, True,
                    dtype=self.table.dtype, dim=self.table.dim)
        return out

    def stats(self) -> dict[str, float]:
        """The cache's counters, with ``hit_rate``."""
        s = self.cache.stats()
        s["hit_rate"] = 1.0 - s["miss_rate"] if s["hits"] + s["misses"] else 0.0
        return s
