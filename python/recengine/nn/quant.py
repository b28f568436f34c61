"""``QuantEmbeddingBag``: an inference EmbeddingBag on int8, int4 or fp16 rows.

The rows are encoded once by the core (int8: FBGEMM's fused 8-bit rowwise format with fp32
scale and bias; int4: 4-bit rowwise with fp16 scale and bias; fp16: half floats) and kept as
one uint8 buffer ``packed_weight`` ``[num_embeddings, row_bytes]``, which the core pools in
place, dequantizing on the fly. The buffer is in the state_dict, so a quantized model saves
and loads like any other.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .. import _access, _core
from .._access import RECORDERS as _RECORDING
from .._dtypes import normalize_dtype, row_bytes
from ..table import EmbeddingTable
from . import _op
from ._oblivious import ObliviousReads
from ._op import MODES

__all__ = ["QUANT_DTYPES", "QuantEmbeddingBag", "quant_embedding_bag_op"]

#: The storage formats :meth:`QuantEmbeddingBag.from_float` takes.
QUANT_DTYPES = ("int8", "int4", "fp16")


@torch.library.custom_op("recengine::quant_embedding_bag", mutates_args=(), device_types="cpu")
def quant_embedding_bag_op(packed: Tensor, dim: int, dtype: str, indices: Tensor,
                           offsets: Tensor, per_sample_weights: Optional[Tensor], mode: int,
                           padding_idx: int, include_last_offset: bool) -> Tensor:
    """Pool rows of ``packed`` (uint8 ``[N, row_bytes]`` of storage ``dtype``) into float32
    ``[B, dim]``; the other arguments as in ``recengine::embedding_bag``."""
    return _pool(packed, dim, dtype, indices, offsets, per_sample_weights, mode, padding_idx,
                 include_last_offset)


@quant_embedding_bag_op.register_fake
def _(packed: Tensor, dim: int, dtype: str, indices: Tensor, offsets: Tensor,
      per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
      include_last_offset: bool) -> Tensor:
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    return packed.new_empty((bags, dim), dtype=torch.float32)


def _pool(packed: Tensor, dim: int, dtype: str, indices: Tensor, offsets: Tensor,
          psw: Optional[Tensor], mode: int, padding_idx: int,
          include_last_offset: bool) -> Tensor:
    weights = None if psw is None else _op._floats(psw)
    out = _core.pool_array(packed.numpy(), indices.numpy(), offsets.numpy(), None, weights,
                           MODES[mode], None if padding_idx < 0 else padding_idx,
                           include_last_offset, dtype=dtype, dim=dim)
    if _RECORDING:  # the hook: one test while nobody records
        _access.note(packed, indices, offsets, None, include_last_offset)
    return torch.from_numpy(out)


class QuantEmbeddingBag(ObliviousReads, torch.nn.Module):
    """An EmbeddingBag for inference whose rows are stored int8, int4 or fp16.

    Args:
        num_embeddings, embedding_dim, mode, padding_idx, include_last_offset: as in
            :class:`torch.nn.EmbeddingBag` (mode "sum", "mean" or "max").
        dtype: "int8", "int4" or "fp16".

    ``forward(input, offsets=None, per_sample_weights=None)`` takes torch's inputs (1-D ids
    with offsets, or 2-D ``[B, n]``) and returns float32 ``[B, embedding_dim]``. Build one from
    a trained module with :meth:`from_float`.

    ``oblivious`` (an attribute: ``"scan"``, ``"oram"``, ``"pad"`` or a
    :class:`recengine.table.Pad`; default None) reads the quantized rows so that the memory
    accesses do not give the ids away (:meth:`recengine.EmbeddingTable.lookup`), through a
    core table of the packed rows made once per version of them; no ``padding_idx`` then.

    Example::

        >>> bag = torch.nn.EmbeddingBag(1000, 16, mode="sum")
        >>> q = QuantEmbeddingBag.from_float(bag, dtype="int8")
        >>> x, o = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
        >>> (q(x, o) - bag(x, o)).abs().max() < 0.05
        tensor(True)
    """

    packed_weight: Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: str = "int8",
                 mode: str = "mean", padding_idx: Optional[int] = None,
                 include_last_offset: bool = False) -> None:
        super().__init__()
        dtype = normalize_dtype(dtype)
        if dtype not in QUANT_DTYPES:
            raise ValueError(f"QuantEmbeddingBag stores one of {QUANT_DTYPES}, got {dtype!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError("num_embeddings and embedding_dim must be at least 1")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx {padding_idx} is out of range for "
                                 f"{num_embeddings} rows")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.dtype, self.mode = dtype, mode
        self.padding_idx, self.include_last_offset = padding_idx, include_last_offset
        self.register_buffer("packed_weight", torch.zeros(
            num_embeddings, row_bytes(dtype, embedding_dim), dtype=torch.uint8))
        self.oblivious = None

    def _packed_table(self, packed: Tensor) -> EmbeddingTable:
        return EmbeddingTable.from_raw(packed.detach().cpu().numpy(), self.dtype,
                                       self.embedding_dim)

    @classmethod
    def from_float(cls, module: torch.nn.EmbeddingBag, dtype: str = "int8") -> QuantEmbeddingBag:
        """Quantize a (torch or recengine) ``EmbeddingBag``'s weight to ``dtype``, keeping its
        mode, padding_idx and include_last_offset.

        Raises:
            ValueError: ``max_norm`` set (it rewrites rows at lookup; quantized rows cannot).
        """
        if not isinstance(module, torch.nn.EmbeddingBag):
            raise TypeError(f"from_float takes a torch.nn.EmbeddingBag, got "
                            f"{type(module).__name__}")
        if module.max_norm is not None:
            raise ValueError("max_norm renormalises rows at lookup, which quantized rows "
                             "cannot do; renormalise the weight before quantizing")
        q = cls(module.num_embeddings, module.embedding_dim, dtype, module.mode,
                module.padding_idx, module.include_last_offset)
        weight = module.weight.detach().to("cpu", torch.float32).contiguous().numpy()
        table = EmbeddingTable(weight, dtype=q.dtype)
        q.packed_weight.copy_(torch.from_numpy(table.raw_rows()))
        return q

    def dequantize(self) -> Tensor:
        """The rows as float32 ``[num_embeddings, embedding_dim]``."""
        raw = self.packed_weight.cpu().numpy()
        table = EmbeddingTable.from_raw(raw, self.dtype, self.embedding_dim)
        return torch.from_numpy(np.asarray(table.to_numpy()))

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype!r}, mode={self.mode!r}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.oblivious is not None:
            s += f", oblivious={self.oblivious!r}"
        return s

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        psw = per_sample_weights
        if psw is not None and self.mode != "sum":
            raise NotImplementedError("per_sample_weights are only supported with mode='sum'")
        include_last = self.include_last_offset
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("if input is 2-D, offsets must be None")
            indices, offsets, psw = _op.flatten_2d(input, psw)
            include_last = False
        elif input.dim() == 1:
            if offsets is None or offsets.dim() != 1:
                raise ValueError("1-D input needs 1-D offsets")
            indices = input
        else:
            raise ValueError(f"input must be 1-D or 2-D, got {input.dim()}-D")
        if self._oblivious is not None:
            if self.padding_idx is not None:
                raise ValueError("an oblivious lookup takes no padding_idx")
            return self._oblivious_tables.pool(self.packed_weight, indices, offsets, psw,
                                               self.mode, include_last, self._oblivious,
                                               self._packed_table)
        args: tuple[Any, ...] = (
            self.packed_weight, self.embedding_dim, self.dtype, indices.contiguous(),
            offsets.contiguous(), psw, MODES.index(self.mode),
            -1 if self.padding_idx is None else self.padding_idx, include_last)
        if not self.packed_weight.is_cpu:
            raise ValueError("QuantEmbeddingBag runs on the CPU; keep it there")
        if torch.compiler.is_compiling():
            return quant_embedding_bag_op(*args)
        return _pool(*args)
