"""The ``recengine::embedding_bag`` torch custom op: the Rust core's pooling as a torch op
with a fake (meta) implementation and autograd, reading the weight's storage in place."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _core

__all__ = ["MODES", "embedding_bag_op"]

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
) -> Tensor:
    """Pool ``weight`` rows: 1-D ``indices`` [L], ``offsets`` [B] (or [B + 1] with
    ``include_last_offset``), optional ``per_sample_weights`` [L] (sum only); ``mode`` an index
    into :data:`MODES`; ``padding_idx`` -1 for none. Returns [B, D] in the weight's dtype.

    ``weight`` must be a C-contiguous float32 or float16 CPU tensor; the core reads its storage
    without a copy, so in-place optimizer updates are seen at the next call.
    """
    w = weight.detach().numpy()
    psw = None if per_sample_weights is None else per_sample_weights.detach().float().numpy()
    out = _core.pool_array(w, indices.numpy(), offsets.numpy(), None, psw, MODES[mode],
                           None if padding_idx < 0 else padding_idx, include_last_offset)
    result = torch.from_numpy(out)
    return result if weight.dtype == torch.float32 else result.to(weight.dtype)


@embedding_bag_op.register_fake
def _(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
      mode: int, padding_idx: int, include_last_offset: bool) -> Tensor:
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    return weight.new_empty((bags, weight.shape[1]))


def _setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    weight, indices, offsets, psw, mode, padding_idx, include_last_offset = inputs
    ctx.save_for_backward(weight, indices, offsets, psw)
    ctx.mode, ctx.padding_idx, ctx.include_last_offset = mode, padding_idx, include_last_offset


def _bag_of_each_index(indices: Tensor, offsets: Tensor, include_last_offset: bool) -> Tensor:
    starts = offsets[:-1] if include_last_offset else offsets
    positions = torch.arange(indices.numel(), dtype=starts.dtype)
    return torch.searchsorted(starts.contiguous(), positions, right=True) - 1


def _backward(ctx, grad):  # type: ignore[no-untyped-def]
    weight, indices, offsets, psw = ctx.saved_tensors
    idx = indices.long()
    bag = _bag_of_each_index(indices, offsets, ctx.include_last_offset)
    keep = torch.ones_like(idx, dtype=torch.bool) if ctx.padding_idx < 0 \
        else idx != ctx.padding_idx
    scale = torch.ones(idx.numel(), dtype=grad.dtype)
    if psw is not None:
        scale = psw.to(grad.dtype)
    if MODES[ctx.mode] == "mean":
        counts = torch.zeros(grad.shape[0], dtype=grad.dtype).index_add_(
            0, bag[keep], torch.ones(int(keep.sum()), dtype=grad.dtype))
        scale = scale / counts[bag].clamp(min=1)
    scale = scale * keep
    grad_weight = grad_psw = None
    if ctx.needs_input_grad[0]:
        rows = grad[bag] * scale[:, None]
        grad_weight = torch.zeros_like(weight).index_add_(0, idx, rows.to(weight.dtype))
    if psw is not None and ctx.needs_input_grad[3]:
        grad_psw = ((grad[bag] * weight[idx].to(grad.dtype)).sum(dim=1) * keep).to(psw.dtype)
    return grad_weight, None, None, grad_psw, None, None, None


embedding_bag_op.register_autograd(_backward, setup_context=_setup)
