"""Which table rows lookups read: the hook behind :func:`recengine.privacy.record`.

Every lookup path of the package (``EmbeddingTable.lookup``, ``EmbeddingCollection.lookup``,
the functional ops, ``recengine.nn``'s modules on the core) calls :func:`note` (or
:func:`note_keyed`) only while :data:`RECORDERS` is non-empty, so with no recorder active a
lookup pays one truthiness test of a module-level list. The recorders themselves
(:class:`recengine.privacy.Recorder`) turn the arguments into row lists.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["RECORDERS", "note", "note_keyed", "rows_and_lengths"]

#: The active recorders, innermost last (``recengine.privacy.record`` adds and removes them;
#: the lookup paths import this very list, so it is changed in place, never rebound).
RECORDERS: list[Any] = []


def note(table: Any, indices: Any, offsets: Any = None, lengths: Any = None,
         include_last_offset: bool = False, label: Optional[str] = None) -> None:
    """One lookup of ``table`` (any object: a table, an array, a weight tensor) with the
    package's index arguments; ``label`` names the table where the recorder has no name for
    it."""
    for r in list(RECORDERS):
        r.note(table, indices, offsets, lengths, include_last_offset, label)


def note_keyed(tables: Sequence[Any], block_tables: Sequence[int], slots: Sequence[int],
               values: Any, lengths: Any, batch: int,
               labels: Optional[Sequence[str]] = None) -> None:
    """One keyed-jagged lookup: feature ``slots[j]``'s ids (a block of ``values``, bag sizes
    ``lengths[slot * batch:(slot + 1) * batch]``) read ``tables[block_tables[j]]``."""

    lens = np.asarray(lengths, dtype=np.int64).reshape(-1, batch) if batch else None
    if lens is None:
        return
    ends = np.cumsum(lens.sum(axis=1))
    starts = ends - lens.sum(axis=1)
    vals = np.asarray(values)
    for j, s in enumerate(slots):
        t = block_tables[j]
        note(tables[t], vals[starts[s]:ends[s]], None, lens[s], False,
             None if labels is None else labels[t])


def _array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def rows_and_lengths(indices: Any, offsets: Any, lengths: Any,
                     include_last_offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rows a lookup reads (a copy, int64 ``[L]``) and its bag sizes (``[B]``), from any of
    the package's index layouts (2-D fixed bags, offsets, lengths; torch tensors or arrays).

    Example::

        >>> rows_and_lengths([[1, 2], [3, 4]], None, None, False)[1].tolist()
        [2, 2]
        >>> rows_and_lengths([5, 6, 7], [0, 1], None, False)[1].tolist()
        [1, 2]
    """
    raw = _array(indices)
    rows = raw.astype(np.int64, copy=True).reshape(-1)
    if raw.ndim == 2 and offsets is None and lengths is None:
        return rows, np.full(raw.shape[0], raw.shape[1], dtype=np.int64)
    if lengths is not None:
        return rows, _array(lengths).astype(np.int64).reshape(-1)
    if offsets is not None:
        offs = _array(offsets).astype(np.int64).reshape(-1)
        return rows, np.diff(offs if include_last_offset else np.append(offs, rows.size))
    return rows, np.array([rows.size], dtype=np.int64)
