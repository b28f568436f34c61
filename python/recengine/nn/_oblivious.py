"""Oblivious lookups for the torch modules: a weight copied into a core table once per version
of it, and looked up through :meth:`recengine.EmbeddingTable.lookup`'s ``oblivious`` modes.

For inference only: the backward's scatter into the weight's gradient would show the ids.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .._oblivious import OBLIVIOUS, Pad
from ..table import EmbeddingTable

__all__ = ["ObliviousReads", "WeightTables", "check_mode"]


def check_mode(how: Any) -> Any:
    """``how`` if it is None, a :class:`~recengine.table.Pad` or one of :data:`OBLIVIOUS`;
    else a ValueError."""
    if how is not None and not isinstance(how, Pad) and how not in OBLIVIOUS:
        raise ValueError(f"oblivious must be None, a Pad or one of {', '.join(OBLIVIOUS)}, "
                         f"got {how!r}")
    return how


class WeightTables:
    """Core tables of torch weights, each copied again when its weight changes (a new
    tensor, or an in-place change through the ``Parameter``: torch's version counter; a
    change through ``weight.data`` bypasses it, so :meth:`clear` after one).

    Example::

        >>> w = torch.nn.Parameter(torch.ones(4, 2), requires_grad=False)
        >>> cache = WeightTables()
        >>> out = cache.pool(w, torch.tensor([0, 3]), torch.tensor([0, 1]), None, "sum",
        ...                  False, "scan")
        >>> out.tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """

    def __init__(self) -> None:
        self._tables: dict[int, tuple[tuple[Any, ...], EmbeddingTable]] = {}

    def clear(self) -> None:
        """Drop every copy (the next lookups copy the weights again)."""
        self._tables.clear()

    def table(self, weight: Tensor,
              make: Optional[Callable[[Tensor], EmbeddingTable]] = None) -> EmbeddingTable:
        """The core table of ``weight``'s current values: ``make(weight)`` (default: its
        values as fp32 rows)."""
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype,
               weight.device)
        held = self._tables.get(id(weight))
        if held is None or held[0] != key:
            table = make(weight) if make is not None else EmbeddingTable(
                weight.detach().cpu().to(torch.float32).numpy())
            held = self._tables[id(weight)] = (key, table)
        return held[1]

    def pool(self, weight: Tensor, indices: Tensor, offsets: Optional[Tensor],
             per_sample_weights: Optional[Tensor], mode: str, include_last_offset: bool,
             how: Any, make: Optional[Callable[[Tensor], EmbeddingTable]] = None) -> Tensor:
        """``weight``'s rows (its table made by ``make``, see :meth:`table`) pooled as
        ``torch.nn.functional.embedding_bag`` does (1-D ``indices`` with ``offsets``, or 2-D
        ``[B, n]`` without), read ``how``; ``[B, D]`` in a float weight's dtype, else float32.
        Refuses a call that needs a gradient."""
        if torch.is_grad_enabled() and (weight.requires_grad or (
                per_sample_weights is not None and per_sample_weights.requires_grad)):
            raise RuntimeError("an oblivious lookup serves inference: call it under "
                               "torch.no_grad() or with a frozen weight")
        table = self.table(weight, make)
        psw = None if per_sample_weights is None else (
            per_sample_weights.detach().to(torch.float32).reshape(-1).numpy())
        idx = indices.detach().cpu().numpy()
        if indices.dim() == 2 and offsets is None:
            out = table.lookup(idx, weights=psw, mode=mode, oblivious=how)
        else:
            out = table.lookup(idx, None if offsets is None else offsets.detach().cpu().numpy(),
                               weights=psw, mode=mode, include_last_offset=include_last_offset,
                               oblivious=how)
        result = torch.from_numpy(out)
        return result.to(weight.dtype) if weight.dtype.is_floating_point else result


class ObliviousReads:
    """The ``oblivious`` attribute of the torch modules: how forward reads the rows (None:
    plainly; else a mode of :func:`check_mode`), with the :class:`WeightTables` its reads go
    through, dropped whenever the mode is set (so setting it again re-copies the weights)."""

    _oblivious: Any
    _oblivious_tables: WeightTables

    @property
    def oblivious(self) -> Any:
        """How forward reads the rows: None (plainly), or an oblivious mode."""
        return self._oblivious

    @oblivious.setter
    def oblivious(self, how: Any) -> None:
        self._oblivious = check_mode(how)
        self._oblivious_tables = WeightTables()
