"""``recengine.nn.functional.embedding_bag``: torch's functional signature on the Rust core.

The torch form of :func:`recengine.embedding_bag` (``recengine/functional.py``, the numpy
layer's functions): tensors in and out, autograd, torch's argument rules.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _op
from ._op import MODES

__all__ = ["embedding_bag"]

_INDEX_DTYPES = (torch.int32, torch.int64)
_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Optional[Tensor] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Optional[Tensor] = None,
    include_last_offset: bool = False,
    padding_idx: Optional[int] = None,
) -> Tensor:
    """Drop-in for :func:`torch.nn.functional.embedding_bag`, pooled by the recengine core.

    Args:
        input: 1-D ``[L]`` int32/int64 indices with ``offsets``, or 2-D ``[B, n]`` (B bags of n).
        weight: ``[num_embeddings, D]``.
        offsets: 1-D ``[B]`` bag starts (``[B + 1]`` with ``include_last_offset``).
        per_sample_weights: ``[L]`` (or ``[B, n]``), mode "sum" only.
        The other arguments mean what they mean in torch.

    Returns:
        ``[B, D]`` in the weight's dtype.

    The core runs for float32/float16/bfloat16 CPU weights with the options it implements
    (every mode, per-sample weights, padding_idx, include_last_offset, 1-D and 2-D input), and
    its threads compute the weight's gradient in sum and mean mode, dense or (``sparse=True``)
    sparse. Everything else (CUDA tensors, float64, ``max_norm``,
    ``scale_grad_by_freq``, max mode with gradients) runs torch's own kernel, so results are
    always torch's semantics. Input that torch rejects raises torch's exception.

    Example::

        >>> w = torch.randn(10, 4)
        >>> embedding_bag(torch.tensor([1, 2, 4]), w, torch.tensor([0, 2]), mode="sum").shape
        torch.Size([2, 4])
    """

    def torch_kernel() -> Tensor:
        return torch.nn.functional.embedding_bag(
            input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
            per_sample_weights, include_last_offset, padding_idx)

    # torch_kernel reads the arguments as the caller gave them: the names below are new ones.
    psw = per_sample_weights
    if (
        not weight.is_cpu or not input.is_cpu
        or weight.dtype not in _WEIGHT_DTYPES or weight.dim() != 2 or weight.shape[1] == 0
        or input.dtype not in _INDEX_DTYPES
        or (offsets is not None and (offsets.dtype not in _INDEX_DTYPES or offsets.dim() != 1))
        or max_norm is not None or scale_grad_by_freq or mode not in MODES
        or (psw is not None and (mode != "sum" or psw.shape != input.shape
                                 or psw.dtype != weight.dtype or not psw.is_cpu))
    ):
        return torch_kernel()
    grad = torch.is_grad_enabled() and (weight.requires_grad
                                        or (psw is not None and psw.requires_grad))
    if mode == "max" and (grad or sparse):
        return torch_kernel()
    num = weight.shape[0]
    if padding_idx is not None and not -num <= padding_idx < num:
        return torch_kernel()
    pad = -1 if padding_idx is None else padding_idx % num
    bag_starts = offsets
    last_offset = include_last_offset
    if input.dim() == 2:
        if offsets is not None or input.shape[1] == 0:
            return torch_kernel()  # torch raises for both
        if grad or torch.compiler.is_compiling():
            indices, bag_starts, psw = _op.flatten_2d(input, psw)
        else:
            indices = input  # B bags of n as they are: the core pools [B, n] without offsets
        last_offset = False
    elif input.dim() == 1 and offsets is not None:
        indices = input
    else:
        return torch_kernel()
    try:
        return _op.embedding_bag(weight.contiguous(), indices.contiguous(),
                                 None if bag_starts is None else bag_starts.contiguous(), psw,
                                 MODES.index(mode), pad, last_offset, sparse)
    except (IndexError, ValueError) as refusal:
        # The core refused the input: torch raises its own exception for it, caused by the
        # core's (which says which index of which bag).
        try:
            return torch_kernel()
        except Exception as theirs:
            raise theirs from refusal
