"""``EmbeddingCollection``: many tables pooled for one batch in a single core call.

The numpy layer's collection (positional per-table arrays in, one ``[B, sum(dims)]`` array
out). Its torch counterpart, with TorchRec's keyed jagged input, is
:class:`recengine.nn.EmbeddingBagCollection` (``recengine/nn/collection.py``): the two
modules pair as ``recengine`` and ``recengine.nn`` do.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from . import _access, _core
from ._access import RECORDERS as _RECORDING
from .table import EmbeddingTable

__all__ = ["EmbeddingCollection"]


def _split(flat: Any, lengths: np.ndarray) -> list[np.ndarray]:
    flat = np.asarray(flat)
    cuts = np.cumsum(lengths.sum(axis=1))[:-1]
    return list(np.split(flat, cuts))


class EmbeddingCollection:
    """T embedding tables (each its own dim and dtype) pooled together, as a table-batched
    embedding: one call pools every table for the same batch of B samples and writes one
    concatenated ``[B, sum(dims)]`` float32 output, table t in columns
    ``column_offsets[t]:column_offsets[t+1]``.

    Args:
        tables: ``EmbeddingTable`` objects, or 2-D float arrays (converted as by
            ``EmbeddingTable(array)``).

    Example::

        >>> import numpy as np, recengine
        >>> c = recengine.EmbeddingCollection([recengine.EmbeddingTable.random(100, 8),
        ...                                    recengine.EmbeddingTable.random(50, 4)])
        >>> out = c.lookup([np.array([1, 2, 3]), np.array([7, 8])],
        ...                lengths=[np.array([2, 1]), np.array([1, 1])])
        >>> out.shape
        (2, 12)
    """

    __slots__ = ("_c", "_tables")

    def __init__(self, tables: Sequence[Any]) -> None:
        self._tables = [t if isinstance(t, EmbeddingTable) else EmbeddingTable(t) for t in tables]
        if not self._tables:
            raise ValueError("an EmbeddingCollection needs at least one table")
        self._c = _core.Collection([t._t for t in self._tables])

    def lookup(
        self,
        indices: Any,
        offsets: Optional[Sequence[Any]] = None,
        lengths: Any = None,
        weights: Optional[Sequence[Any]] = None,
        mode: str = "sum",
        include_last_offset: bool = False,
        oblivious: Any = None,
    ) -> np.ndarray:
        """Pool every table for the same batch.

        Args:
            indices: a sequence of T index arrays (1-D, or 2-D ``[B, n]`` fixed-size bags),
                or one flat 1-D array of all tables' indices when ``lengths`` is ``[T, B]``
                (the keyed-jagged layout: table 0's bags first).
            offsets: a sequence of T offsets arrays (see ``EmbeddingTable.lookup``).
            lengths: a sequence of T lengths arrays, or one ``[T, B]`` array.
            weights: None, or a sequence of T per-lookup weight arrays (None entries allowed).
            mode: "sum", "mean" or "max", for all tables.
            include_last_offset: whether each offsets array ends with its table's L.
            oblivious: look every table up obliviously (see ``EmbeddingTable.lookup``): one
                mode (``"scan"``, ``"oram"``, ``"pad"``, a ``Pad``) for all tables, or a
                sequence of T (None entries read plainly); table by table.

        Returns:
            ``[B, sum(dims)]`` float32; every table must describe the same B bags.
        """
        if lengths is not None and isinstance(lengths, np.ndarray) and lengths.ndim == 2:
            if isinstance(indices, np.ndarray) and indices.ndim == 1:
                indices = _split(indices, lengths)
                if weights is not None and isinstance(weights, np.ndarray):
                    weights = _split(weights, lengths)
            lengths = list(lengths)
        if oblivious is not None:
            return self._lookup_oblivious(oblivious, indices, offsets, lengths, weights, mode,
                                          include_last_offset)
        out = self._c.lookup(list(indices), None if offsets is None else list(offsets),
                             None if lengths is None else list(lengths),
                             None if weights is None else list(weights), mode,
                             include_last_offset)
        if _RECORDING:  # the hook: one test while nobody records
            for i, (t, idx) in enumerate(zip(self._tables, indices)):
                _access.note(t, idx, None if offsets is None else offsets[i],
                             None if lengths is None else lengths[i], include_last_offset)
        return out

    def _lookup_oblivious(self, oblivious: Any, indices: Any, offsets: Any, lengths: Any,
                          weights: Any, mode: str, include_last_offset: bool) -> np.ndarray:
        n = len(self._tables)
        how = (list(oblivious) if isinstance(oblivious, (list, tuple)) else [oblivious] * n)
        args = {"indices": indices, "offsets": offsets, "lengths": lengths, "weights": weights,
                "oblivious": how}
        for name, value in args.items():
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} tables")
        parts = [t.lookup(indices[i], None if offsets is None else offsets[i],
                          None if lengths is None else lengths[i],
                          None if weights is None else weights[i], mode,
                          include_last_offset=include_last_offset, oblivious=how[i])
                 for i, t in enumerate(self._tables)]
        bags = {p.shape[0] for p in parts}
        if len(bags) > 1:
            raise ValueError(f"the tables describe different numbers of bags: {sorted(bags)}")
        return np.concatenate(parts, axis=1) if parts else np.zeros((0, 0), np.float32)

    @property
    def tables(self) -> list[EmbeddingTable]:
        return list(self._tables)

    @property
    def dims(self) -> list[int]:
        return [t.dim for t in self._tables]

    @property
    def column_offsets(self) -> list[int]:
        """Where each table's columns start in the output, with the total dim last."""
        return [0, *np.cumsum(self.dims).tolist()]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def __getitem__(self, i: int) -> EmbeddingTable:
        return self._tables[i]

    def __repr__(self) -> str:
        return f"EmbeddingCollection({len(self)} tables, dims={self.dims}, nbytes={self.nbytes})"
