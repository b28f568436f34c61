"""The oblivious lookup modes of :meth:`recengine.EmbeddingTable.lookup`: what each reads.

* ``"scan"``: every row of the table once per call, in order (``recengine_core::oblivious``).
  Nothing about the ids shows in the rows read.
* ``"oram"``: each looked-up row fetched through a Path ORAM of the table's rows
  (``recengine_core::oram``: buckets of 4 blocks, a recursive position map, a stash bounded
  at ``_core.ORAM_STASH_LIMIT``): the host sees one random root-to-leaf path per lookup per
  ORAM level, the same distribution whatever the ids.
* ``"pad"`` or a :class:`Pad`: each bag read as a multiple of ``count`` rows, its ids mixed
  with dummy rows in random order. Weaker: see :class:`Pad` for what it hides and what not.

Every mode returns the plain lookup's output bit for bit.
"""

from __future__ import annotations

import secrets
from typing import Any, Optional

import numpy as np

from . import _access, _core

__all__ = ["OBLIVIOUS", "Pad", "lookup"]

#: The oblivious lookup modes (``oblivious=`` of :meth:`recengine.EmbeddingTable.lookup`).
OBLIVIOUS: tuple[str, ...] = ("scan", "oram", "pad")


class Pad:
    """Padding with dummy rows: every bag of a lookup reads ``count`` rows (or the next multiple
    of ``count`` for a longer bag), its ids and dummies shuffled together; the output ignores
    the dummies and is bit for bit the plain lookup's.

    Dummies are drawn to flatten the frequency profile a host counts. With ``popularity`` (the
    expected share of real lookups each row gets, ``[num_rows]``, e.g. from training data),
    dummies come from ``q ~ max(tau - p, 0)`` with the floor ``tau`` set so a bag of one real
    lookup and ``count - 1`` dummies reads every row at rate ``max(p, tau)``: every row rarer
    than ``tau`` looks alike. Without it, dummies are uniform.

    What it hides: how many ids a bag has (up to ``count``), and within one request which rows
    are real, to the extent the dummies look like real reads. What it does not: rows more
    popular than ``tau`` still stand out; a row that recurs across a user's requests is real
    (dummies rarely recur), so linking requests (a session, a cookie, timing) strips the
    dummies by intersection; a bag longer than ``count`` shows its length in multiples of
    ``count``; a bag of many real ids gets fewer dummies per id than the floor assumes.

    Args:
        count: rows every bag reads; None pads each call's bags to the next power of two at or
            above its longest bag (which then shows that length, rounded).
        popularity: optional ``[num_rows]`` non-negative weights (normalised here).
        seed: the dummies' generator seed; None draws one from the OS.

    Example::

        >>> import numpy as np, recengine as rc
        >>> t = rc.EmbeddingTable.random(100, 4)
        >>> ids, lens = np.array([3, 7, 9]), np.array([1, 2])
        >>> out = t.lookup(ids, lengths=lens, oblivious=Pad(count=8, seed=0))
        >>> bool((out == t.lookup(ids, lengths=lens)).all())
        True
    """

    def __init__(self, count: Optional[int] = None, popularity: Any = None,
                 seed: Optional[int] = None) -> None:
        if count is not None and (isinstance(count, bool) or int(count) != count or count < 1):
            raise ValueError(f"count must be a positive integer or None, got {count!r}")
        self.count = None if count is None else int(count)
        self.popularity: Optional[np.ndarray] = None
        if popularity is not None:
            p = np.asarray(popularity, dtype=np.float64).reshape(-1)
            if p.size == 0 or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
                raise ValueError("popularity must be finite, non-negative weights with a "
                                 "positive sum")
            self.popularity = p / p.sum()
        self._rng = np.random.default_rng(seed)
        self._cdf: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        popular = None if self.popularity is None else f"<{self.popularity.size} rows>"
        return f"Pad(count={self.count}, popularity={popular})"

    def floor(self) -> Optional[float]:
        """``tau``: the rate every row rarer than it is read at (None without popularity or
        without a fixed count).

        Example::

            >>> Pad(count=3, popularity=[0.5, 0.3, 0.2]).floor()
            1.0
        """
        if self.popularity is None or self.count is None:
            return None
        p = np.sort(self.popularity)
        budget = float(self.count - 1)
        levels = (budget + np.cumsum(p)) / np.arange(1, p.size + 1)
        ok = levels >= p
        ok[:-1] &= levels[:-1] <= p[1:]
        return float(levels[np.flatnonzero(ok)[-1]])

    def _dummies(self, n: int, num_rows: int) -> np.ndarray:
        if self.popularity is None:
            return self._rng.integers(0, num_rows, n, dtype=np.int64)
        if self.popularity.size != num_rows:
            raise ValueError(f"popularity has {self.popularity.size} rows, the table "
                             f"{num_rows}")
        if self._cdf is None:
            tau = self.floor()
            q = np.maximum((tau if tau is not None else 0.0) - self.popularity, 0.0)
            if q.sum() <= 0:
                q = np.ones(num_rows)
            self._cdf = np.cumsum(q) / q.sum()
        picks = np.searchsorted(self._cdf, self._rng.random(n), side="right")
        return np.minimum(picks, num_rows - 1).astype(np.int64)

    def plan(self, rows: np.ndarray, lengths: np.ndarray, num_rows: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What a padded lookup reads: ``(reads, slots, read_lengths)``; ``reads`` the rows in
        the order read, ``slots`` the lookup each read fills (``len(rows)`` for a dummy),
        ``read_lengths`` ``[B]`` the rows each bag reads.

        Example::

            >>> reads, slots, lens = Pad(count=4, seed=1).plan(np.array([5, 6]),
            ...                                                 np.array([2, 0]), 10)
            >>> lens.tolist(), sorted(slots[:4].tolist()), slots[4:].tolist()
            ([4, 4], [0, 1, 2, 2], [2, 2, 2, 2])
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if (lengths < 0).any() or int(lengths.sum()) != rows.size:
            raise ValueError(f"bag sizes must be non-negative and sum to the {rows.size} ids")
        count = self.count
        if count is None:
            longest = int(lengths.max(initial=1))
            count = 1 << max(longest - 1, 0).bit_length()
        target = np.maximum(-(-lengths // count), 1) * count
        extra = target - lengths
        bag_of = np.repeat(np.arange(lengths.size), lengths)
        dummy_bag = np.repeat(np.arange(lengths.size), extra)
        every_bag = np.concatenate([bag_of, dummy_bag])
        reads = np.concatenate([rows, self._dummies(int(extra.sum()), num_rows)])
        slots = np.concatenate([np.arange(rows.size, dtype=np.int64),
                                np.full(dummy_bag.size, rows.size, dtype=np.int64)])
        order = np.lexsort((self._rng.random(every_bag.size), every_bag))
        return reads[order], slots[order], target.astype(np.int64)


def lookup(table: Any, how: Any, indices: Any, offsets: Any, lengths: Any, weights: Any,
           mode: str, padding_idx: Optional[int], include_last_offset: bool) -> np.ndarray:
    """``table.lookup(...)`` (an :class:`~recengine.EmbeddingTable`) read obliviously ``how``
    (a name in :data:`OBLIVIOUS` or a :class:`Pad`), noting what a host sees to the access
    hook's recorders."""
    if padding_idx is not None:
        raise ValueError("an oblivious lookup takes no padding_idx (skipping a row would "
                         "depend on the ids)")
    if isinstance(how, Pad) or how == "pad":
        return _padded(table, Pad() if how == "pad" else how, indices, offsets, lengths,
                       weights, mode, include_last_offset)
    if how == "scan":
        out = table._t.lookup_scan(indices, offsets, lengths, weights, mode,
                                   include_last_offset)
        if _access.RECORDERS:  # every row, in order
            rows = table.num_rows
            _access.note(table, np.arange(rows), None, np.array([rows]), False)
        return out
    if how == "oram":
        oram = table.oram()
        if not _access.RECORDERS:
            return oram.lookup(indices, offsets, lengths, weights, mode, include_last_offset)
        oram.record(True)
        try:
            out = oram.lookup(indices, offsets, lengths, weights, mode, include_last_offset)
            trees, leaves = oram.take_trace()
        finally:
            oram.record(False)
        # One path of the rows' ORAM a lookup (its maps' paths say no more): the leaf.
        seen = leaves[trees == 0].astype(np.int64)
        _access.note(table, seen, None, np.array([seen.size]), False)
        return out
    raise ValueError(f"oblivious must be None, a Pad or one of {', '.join(OBLIVIOUS)}, "
                     f"got {how!r}")


def _padded(table: Any, pad: Pad, indices: Any, offsets: Any, lengths: Any, weights: Any,
            mode: str, include_last_offset: bool) -> np.ndarray:
    rows, bags = _access.rows_and_lengths(indices, offsets, lengths, include_last_offset)
    reads, slots, read_lengths = pad.plan(rows, bags, table.num_rows)
    out = table._t.lookup_padded(indices, reads, slots, offsets, lengths, weights, mode,
                                 include_last_offset)
    if _access.RECORDERS:
        _access.note(table, reads, None, read_lengths, False)
    return out


def new_oram(table: Any, seed: Optional[int]) -> Any:
    """A Path ORAM of ``table``'s rows (``_core.Oram``), seeded from the OS by default."""
    return _core.Oram(table._t, secrets.randbits(64) if seed is None else seed)
