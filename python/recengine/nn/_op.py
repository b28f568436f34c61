"""The Rust core's pooling as torch operations.

Two routes to the same implementations (:func:`pool`, :func:`weight_grad`):

* ``torch.ops.recengine.embedding_bag`` and its backward ops: torch custom ops with fake
  (meta) implementations and registered autograd, which ``torch.compile`` and
  ``torch.export`` capture as single graph nodes.
* :class:`EmbeddingBagFunction`: a plain ``torch.autograd.Function`` for eager calls, which
  skips the custom-op dispatcher (about 10 us a call, the whole cost of a small lookup).

:func:`embedding_bag` picks the route: the custom op while torch is tracing, the function
otherwise. Both read the weight's storage in place, so in-place optimizer updates are seen at
the next call.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .. import _access, _core
from .._access import RECORDERS as _RECORDING
from .hugepages import on_huge_pages

__all__ = [
    "MODES",
    "EmbeddingBagFunction",
    "embedding_bag",
    "embedding_bag_backward_op",
    "embedding_bag_op",
    "embedding_bag_sparse_backward_op",
    "flatten_2d",
    "pool",
    "weight_grad",
]

#: Mode codes of the ops, in torch's order.
MODES = ("sum", "mean", "max")


# --------------------------------------------------------------------------------------------
# implementations


#: Each live weight's numpy view, by ``id``, with a weak reference to the weight (whose
#: callback drops the entry), the storage address and shape the view was made for, the
#: storage dtype for the core, and whether the weight lies on huge pages: making a view costs
#: more than a small lookup. The view holds a detached alias of the weight, not the weight, so
#: it does not keep the weight alive.
_VIEWS: dict[int, tuple[weakref.ref[Tensor], int, torch.Size, np.ndarray, Optional[str], bool]] = {}


def _table(weight: Tensor) -> tuple[np.ndarray, Optional[str], bool]:
    """The weight as the core takes it, sharing its storage: ``(array, None, huge)`` for
    float32 and float16, ``(bytes, "bf16", huge)`` for bfloat16 (numpy has no bfloat16), with
    ``huge`` whether it lies on huge pages. Cached per weight while its storage stays where it
    is (in-place updates keep it; ``.data =`` moves it)."""
    ptr = weight.data_ptr()
    key = id(weight)
    cached = _VIEWS.get(key)
    if cached is not None and cached[0]() is weight and cached[1] == ptr \
            and cached[2] == weight.shape and cached[3].dtype == _NUMPY_OF.get(weight.dtype):
        return cached[3], cached[4], cached[5]
    w = weight.detach()
    if w.dtype == torch.bfloat16:
        array, dtype = w.view(torch.uint8).numpy(), "bf16"
    else:
        array, dtype = w.numpy(), None
    huge = on_huge_pages(w)
    try:
        ref = weakref.ref(weight, lambda _r, key=key: _drop_view(key, _r))
    except TypeError:  # not weakly referenceable: no cache
        return array, dtype, huge
    _VIEWS[key] = (ref, ptr, weight.shape, array, dtype, huge)
    return array, dtype, huge


def _drop_view(key: int, ref: weakref.ref[Tensor]) -> None:
    entry = _VIEWS.get(key)
    if entry is not None and entry[0] is ref:
        del _VIEWS[key]


_NUMPY_OF = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint8}


def _floats(t: Tensor) -> np.ndarray:
    """A float32 numpy view (or copy, for other dtypes) of ``t``."""
    return t.detach().to(torch.float32).contiguous().numpy()


def flatten_2d(input: Tensor, per_sample_weights: Optional[Tensor]
               ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """2-D input ``[B, n]`` (B bags of n) as flat indices ``[B * n]``, bag offsets ``[B]`` and
    flat per-sample weights."""
    bags, per_bag = input.shape
    offsets = torch.arange(0, bags * per_bag, max(per_bag, 1), dtype=input.dtype)[:bags]
    psw = None if per_sample_weights is None else per_sample_weights.reshape(-1)
    return input.reshape(-1), offsets, psw


def pool(weight: Tensor, indices: Tensor, offsets: Optional[Tensor],
         per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
         include_last_offset: bool) -> Tensor:
    """Pool ``weight`` rows: 1-D ``indices`` [L], ``offsets`` [B] (or [B + 1] with
    ``include_last_offset``), or 2-D ``indices`` [B, n] (B bags of n) with ``offsets`` None;
    optional ``per_sample_weights`` shaped as ``indices`` (sum only); ``mode`` an index
    into :data:`MODES`; ``padding_idx`` -1 for none. Returns [B, D] in the weight's dtype.

    ``weight`` must be a C-contiguous float32, float16 or bfloat16 CPU tensor.
    """
    psw = None if per_sample_weights is None else _floats(per_sample_weights)
    array, dtype, huge = _table(weight)
    out = _core.pool_array(array, indices.numpy(), None if offsets is None else offsets.numpy(),
                           None, None if psw is None else psw.reshape(-1), MODES[mode],
                           None if padding_idx < 0 else padding_idx, include_last_offset,
                           dtype=dtype, huge_pages=huge)
    if _RECORDING:  # the hook: one test while nobody records
        _access.note(weight, indices, offsets, None, include_last_offset)
    result = torch.from_numpy(out)
    return result if weight.dtype == torch.float32 else result.to(weight.dtype)


#: The core's names of the weight dtypes whose gradients it computes.
CORE_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _backward_args(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
                   psw: Optional[Tensor], mode: int, padding_idx: int,
                   include_last_offset: bool) -> dict[str, Any]:
    # The output's gradient has the weight's dtype: a float16 or bfloat16 weight's gradient
    # is summed in that precision, as torch's CPU backward does (see Plan::accumulate_as).
    return dict(grad=_floats(grad), num_rows=num_rows, indices=indices.numpy(),
                offsets=offsets.numpy(), weights=None if psw is None else _floats(psw),
                mode=MODES[mode], padding_idx=None if padding_idx < 0 else padding_idx,
                include_last_offset=include_last_offset,
                accumulate=CORE_DTYPES.get(grad.dtype, "fp32"))


def dense_grad(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
               psw: Optional[Tensor], mode: int, padding_idx: int,
               include_last_offset: bool) -> Tensor:
    """The weight's dense float32 gradient [num_rows, D] from the output's ``grad`` [B, D],
    summed by the core on its threads (sum and mean modes)."""
    out = torch.zeros(num_rows, grad.shape[1], dtype=torch.float32)
    _core.pool_backward(**_backward_args(grad, num_rows, indices, offsets, psw, mode,
                                         padding_idx, include_last_offset), out=out.numpy())
    return out


def sparse_grad_parts(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
                      psw: Optional[Tensor], mode: int, padding_idx: int,
                      include_last_offset: bool) -> tuple[Tensor, Tensor]:
    """The sparse gradient as torch makes it (uncoalesced): each non-padding lookup's row
    (int64 [K]) and its scaled output gradient (float32 [K, D]), in lookup order."""
    rows, values = _core.pool_backward(**_backward_args(grad, num_rows, indices, offsets, psw,
                                                        mode, padding_idx,
                                                        include_last_offset))
    return torch.from_numpy(rows), torch.from_numpy(values)


def _psw_grad(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor,
              psw: Tensor, padding_idx: int, include_last_offset: bool) -> Tensor:
    """d out[b] / d psw[j] = weight[idx_j] . grad[b] for j in bag b, padding lookups 0: each
    dot product summed in float32 and rounded once to ``psw``'s dtype, as torch's."""
    starts = offsets[:-1] if include_last_offset else offsets
    positions = torch.arange(indices.numel(), dtype=starts.dtype)
    bag = torch.searchsorted(starts.contiguous(), positions, right=True) - 1
    idx = indices.long()
    dots = (grad[bag].float() * weight[idx].float()).sum(dim=1)
    if padding_idx >= 0:
        dots = dots * (idx != padding_idx)
    return dots.to(psw.dtype)


def weight_grad(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor,
                psw: Optional[Tensor], mode: int, padding_idx: int, include_last_offset: bool,
                sparse: bool, traced: bool = False) -> Tensor:
    """The weight's gradient in its dtype: dense, or (``sparse``) an uncoalesced sparse COO
    tensor with one entry per non-padding lookup, as torch's. ``traced`` goes through the
    backward custom ops (for graphs torch captures)."""
    num, dim = weight.shape
    args = (grad.contiguous(), num, indices, offsets, psw, mode, padding_idx,
            include_last_offset)
    if sparse:
        rows, values = (embedding_bag_sparse_backward_op if traced else sparse_grad_parts)(*args)
        return torch.sparse_coo_tensor(rows[None], values.to(weight.dtype), (num, dim),
                                       check_invariants=False)
    out = (embedding_bag_backward_op if traced else dense_grad)(*args)
    return out if weight.dtype == torch.float32 else out.to(weight.dtype)


# --------------------------------------------------------------------------------------------
# custom ops, for torch.compile and torch.export


@torch.library.custom_op("recengine::embedding_bag", mutates_args=(), device_types="cpu")
def embedding_bag_op(weight: Tensor, indices: Tensor, offsets: Tensor,
                     per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
                     include_last_offset: bool, sparse: bool) -> Tensor:
    """:func:`pool` as a custom op; ``sparse`` makes the weight's gradient sparse."""
    return pool(weight, indices, offsets, per_sample_weights, mode, padding_idx,
                include_last_offset)


@embedding_bag_op.register_fake
def _(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
      mode: int, padding_idx: int, include_last_offset: bool, sparse: bool) -> Tensor:
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    return weight.new_empty((bags, weight.shape[1]))


@torch.library.custom_op("recengine::embedding_bag_backward", mutates_args=(),
                         device_types="cpu")
def embedding_bag_backward_op(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
                              per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
                              include_last_offset: bool) -> Tensor:
    """:func:`dense_grad` as a custom op."""
    return dense_grad(grad, num_rows, indices, offsets, per_sample_weights, mode, padding_idx,
                      include_last_offset)


@embedding_bag_backward_op.register_fake
def _(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
      per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
      include_last_offset: bool) -> Tensor:
    return grad.new_empty((num_rows, grad.shape[1]), dtype=torch.float32)


@torch.library.custom_op("recengine::embedding_bag_sparse_backward", mutates_args=(),
                         device_types="cpu")
def embedding_bag_sparse_backward_op(grad: Tensor, num_rows: int, indices: Tensor,
                                     offsets: Tensor, per_sample_weights: Optional[Tensor],
                                     mode: int, padding_idx: int,
                                     include_last_offset: bool) -> tuple[Tensor, Tensor]:
    """:func:`sparse_grad_parts` as a custom op."""
    return sparse_grad_parts(grad, num_rows, indices, offsets, per_sample_weights, mode,
                             padding_idx, include_last_offset)


@embedding_bag_sparse_backward_op.register_fake
def _(grad: Tensor, num_rows: int, indices: Tensor, offsets: Tensor,
      per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
      include_last_offset: bool) -> tuple[Tensor, Tensor]:
    unique = torch.library.get_ctx().new_dynamic_size()
    return (indices.new_empty((unique,), dtype=torch.int64),
            grad.new_empty((unique, grad.shape[1]), dtype=torch.float32))


def _setup(ctx: Any, inputs: tuple[Any, ...], output: Optional[Tensor]) -> None:
    weight, indices, offsets, psw, mode, padding_idx, include_last_offset, sparse = inputs
    ctx.save_for_backward(weight, indices, offsets, psw)
    ctx.args = (mode, padding_idx, include_last_offset, sparse)


def _backward(ctx: Any, grad: Tensor, traced: bool = True) -> tuple[Optional[Tensor], ...]:
    weight, indices, offsets, psw = ctx.saved_tensors
    mode, padding_idx, include_last_offset, sparse = ctx.args
    grad_weight = grad_psw = None
    if ctx.needs_input_grad[0]:
        grad_weight = weight_grad(grad, weight, indices, offsets, psw, mode, padding_idx,
                                  include_last_offset, sparse, traced=traced)
    if psw is not None and ctx.needs_input_grad[3]:
        grad_psw = _psw_grad(grad, weight, indices, offsets, psw, padding_idx,
                             include_last_offset)
    return grad_weight, None, None, grad_psw, None, None, None, None


embedding_bag_op.register_autograd(_backward, setup_context=_setup)


# --------------------------------------------------------------------------------------------
# eager route


class EmbeddingBagFunction(torch.autograd.Function):
    """:func:`pool` with the core's backward, for eager calls (same arguments as
    :func:`embedding_bag_op`)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, indices: Tensor,  # type: ignore[override]
                offsets: Tensor, per_sample_weights: Optional[Tensor], mode: int,
                padding_idx: int, include_last_offset: bool, sparse: bool) -> Tensor:
        # The classic form (ctx as the first argument): the setup_context form binds the
        # signature with inspect on every call, which costs more than a small lookup.
        _setup(ctx, (weight, indices, offsets, per_sample_weights, mode, padding_idx,
                     include_last_offset, sparse), None)
        return pool(weight, indices, offsets, per_sample_weights, mode, padding_idx,
                    include_last_offset)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        return _backward(ctx, grad, traced=False)


def embedding_bag(weight: Tensor, indices: Tensor, offsets: Optional[Tensor],
                  per_sample_weights: Optional[Tensor], mode: int, padding_idx: int,
                  include_last_offset: bool, sparse: bool) -> Tensor:
    """Pool on the core (arguments as :func:`embedding_bag_op`): through the custom op while
    torch traces (compile, export), else straight to the core, through autograd only when a
    gradient is needed. ``offsets`` may be None only for 2-D ``indices`` ``[B, n]`` when
    neither applies (the plain pooling takes fixed-size bags as they are)."""
    if torch.compiler.is_compiling():
        return embedding_bag_op(weight, indices, offsets, per_sample_weights, mode,
                                padding_idx, include_last_offset, sparse)
    if torch.is_grad_enabled() and (weight.requires_grad or (
            per_sample_weights is not None and per_sample_weights.requires_grad)):
        return EmbeddingBagFunction.apply(weight, indices, offsets, per_sample_weights, mode,
                                          padding_idx, include_last_offset, sparse)
    return pool(weight, indices, offsets, per_sample_weights, mode, padding_idx,
                include_last_offset)
