"""The ``recengine::embedding_bag`` torch custom op: the Rust core's pooling as a torch op
with a fake (meta) implementation and autograd, reading the weight's storage in place."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import _core

__all__ = [
    "MODES",
    "embedding_bag_backward_op",
    "embedding_bag_op",
    "embedding_bag_sparse_backward_op",
]

#: Mode codes of the op, in torch's order.
MODES = ("sum", "mean", "max")


@torch.library.custom_op("recengine::embedding_bag", mutates_args=(), device_types="cpu")
def embedding_bag_op(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Optional[Tensor],
    mode: int,
    padding_idx: int,
    include_last_offset: bool,
    sparse: bool,
) -> Tensor:
    """Pool ``weight`` rows: 1-D ``indices`` [L], ``offsets`` [B] (or [B + 1] with
    ``include_last_offset``), optional ``per_sample_weights`` [L] (sum only); ``mode`` an index
    into :data:`MODES`; ``padding_idx`` -1 for none; ``sparse`` makes the weight's gradient a
    sparse tensor. Returns [B, D] in the weight's dtype.

    ``weight`` must be a C-contiguous float32, float16 or bfloat16 CPU tensor; the core reads
    its storage without a copy, so in-place optimizer updates are seen at the next call.
    """
    psw = None if per_sample_weights is None else _floats(per_sample_weights)
    array, dtype = _table(weight)
    out = _core.pool_array(array, indices.numpy(), offsets.numpy(), None, psw, MODES[mode],
                           None if padding_idx < 0 else padding_idx, include_last_offset,
                           dtype=dtype)
    result = torch.from_numpy(out)
    return result if weight.dtype == torch.float32 else result.to(weight.dtype)


def _table(weight: Tensor) -> tuple[np.ndarray, Optional[str]]:
    """The weight as the core takes it, sharing its storage: ``(array, None)`` for float32 and
    float16, ``(bytes, "bf16")`` for bfloat16 (numpy has no bfloat16)."""
    w = weight.detach()
    if w.dtype == torch.bfloat16:
        return w.view(torch.uint8).numpy(), "bf16"
    return w.numpy(), None


def _floats(t: Tensor) -> np.ndarray:
    """A float32 numpy view (or copy, for other dtypes) of ``t``."""
    return t.detach().to(torch.float32).contiguous().numpy()


@embedding_bag_op.register_fake
def _(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
      mode: int, padding_idx: int, include_last_offset: bool, sparse: bool) -> Tensor:
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    return weight.new_empty((bags, weight.shape[1]))


def _setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    weight, indices, offsets, psw, mode, padding_idx, include_last_offset, sparse = inputs
    ctx.save_for_backward(weight, indices, offsets, psw)
    ctx.mode, ctx.padding_idx = mode, padding_idx
    ctx.include_last_offset, ctx.sparse = include_last_offset, sparse


def _bag_of_each_index(indices: Tensor, offsets: Tensor, include_last_offset: bool) -> Tensor:
    starts = offsets[:-1] if include_last_offset else offsets
    positions = torch.arange(indices.numel(), dtype=starts.dtype)
    return torch.searchsorted(starts.contiguous(), positions, right=True) - 1


@torch.library.custom_op("recengine::embedding_bag_backward", mutates_args=(),
                        device_types="cpu")
def embedding_bag_backward_op(
    grad: Tensor,
    num_rows: int,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Optional[Tensor],
    mode: int,
    padding_idx: int,
    include_last_offset: bool,
) -> Tensor:
    """The weight's dense float32 gradient [num_rows, D] from the output's ``grad`` [B, D],
    summed by the core on its threads (sum and mean modes; arguments as in
    :func:`embedding_bag_op`)."""
    out = torch.zeros(num_rows, grad.shape[1], dtype=torch.float32)
    _core.pool_backward(**_backward_args(grad, num_rows, indices, offsets, per_sample_weights,
                                         mode, padding_idx, include_last_offset),
                        out=out.numpy())
    return out


@embedding_bag_backward_op.register_fake
def _(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
      per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
      include_last_offset: bool) -> Tensor:
    return grad.new_empty((num_rows, grad.shape[1]), dtype=torch.float32)


@torch.library.custom_op("recengine::embedding_bag_sparse_backward", mutates_args=(),
                        device_types="cpu")
def embedding_bag_sparse_backward_op(
    grad: Tensor,
    num_rows: int,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Optional[Tensor],
    mode: int,
    padding_idx: int,
    include_last_offset: bool,
) -> tuple[Tensor, Tensor]:
    """The weight's gradient as the rows the lookups touched, ascending and once each (int64
    [U]), and their float32 gradients [U, D]: a coalesced sparse gradient."""
    rows, values = _core.pool_backward(**_backward_args(
        grad, num_rows, indices, offsets, per_sample_weights, mode, padding_idx,
        include_last_offset))
    return torch.from_numpy(rows), torch.from_numpy(values)


@embedding_bag_sparse_backward_op.register_fake
def _(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
      per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
      include_last_offset: bool) -> tuple[Tensor, Tensor]:
    unique = torch.library.get_ctx().new_dynamic_size()
    return (indices.new_empty((unique,), dtype=torch.int64),
            grad.new_empty((unique, grad.shape[1]), dtype=torch.float32))


def _backward_args(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
                   psw: Optional[Tensor], mode: int, padding_idx: int,
                   include_last_offset: bool) -> dict:
    return dict(grad=_floats(grad), num_rows=num_rows, indices=indices.numpy(),
                offsets=offsets.numpy(), weights=None if psw is None else _floats(psw),
                mode=MODES[mode], padding_idx=None if padding_idx < 0 else padding_idx,
                include_last_offset=include_last_offset)


def _weight_grad(ctx, grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor,  # type: ignore[no-untyped-def]
                 psw: Optional[Tensor]) -> Tensor:
    """The weight's gradient: dense, or a coalesced sparse tensor of the rows touched."""
    num, dim = weight.shape
    args = (grad, num, indices, offsets, psw, ctx.mode, ctx.padding_idx, ctx.include_last_offset)
    if ctx.sparse:
        rows, values = embedding_bag_sparse_backward_op(*args)
        return torch.sparse_coo_tensor(rows[None], values.to(weight.dtype), (num, dim),
                                       is_coalesced=True, check_invariants=False)
    return embedding_bag_backward_op(*args).to(weight.dtype)


def _backward(ctx, grad):  # type: ignore[no-untyped-def]
    weight, indices, offsets, psw = ctx.saved_tensors
    grad = grad.contiguous()
    grad_weight = grad_psw = None
    if ctx.needs_input_grad[0]:
        grad_weight = _weight_grad(ctx, grad, weight, indices, offsets, psw)
    if psw is not None and ctx.needs_input_grad[3]:
        # d out[b] / d psw[j] = weight[idx_j] for j in bag b, padding lookups excepted.
        idx = indices.long()
        bag = _bag_of_each_index(indices, offsets, ctx.include_last_offset)
        dots = (grad[bag] * weight[idx].to(grad.dtype)).sum(dim=1)
        if ctx.padding_idx >= 0:
            dots = dots * (idx != ctx.padding_idx)
        grad_psw = dots.to(psw.dtype)
    return grad_weight, None, None, grad_psw, None, None, None, None


embedding_bag_op.register_autograd(_backward, setup_context=_setup)
