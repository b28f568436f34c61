"""``MoE``: a mixture-of-experts feed-forward layer with dynamic or static (capacity) gating,
and optional Expert Buffering of its expert weights (arXiv 2303.06182).

Each of ``num_experts`` experts is a two-layer feed-forward network, ``relu(x W1 + b1) W2 +
b2`` (``d_model -> d_hidden -> d_model``). A linear gate scores every token; each token goes
to its ``top_k`` best experts, weighted by their softmax probabilities renormalised over the
``top_k``.

* ``gating="dynamic"``: tokens are sorted by expert id and each expert runs on exactly its
  tokens (no padding, nothing dropped): O(S D + S log S) dispatch.
* ``gating="static"``: GShard's capacity-padded dispatch. Each expert takes at most
  ``C = ceil(capacity_factor * S * top_k / num_experts)`` tokens, first choices of all tokens
  before second choices, in token order; a token's choice past its expert's capacity is
  dropped (it adds nothing to that token's output). Dispatch and combine are dense one-hot
  einsums over ``[S, E, C]``, as in the paper's baseline.

With ``buffer=ExpertBuffer(slots=...)`` the layer serves inference from a buffer: all experts'
weights live in a slow tier and only ``slots`` of them in fast memory; each forward fetches the
experts its batch routes to (in rounds of at most ``slots``), runs them from their slots and
releases them. The output equals the unbuffered layer's exactly.

Example::

    >>> import torch
    >>> from recengine.moe import MoE
    >>> layer = MoE(d_model=16, d_hidden=32, num_experts=8, top_k=2)
    >>> layer(torch.randn(4, 10, 16)).shape
    torch.Size([4, 10, 16])
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

__all__ = ["GATINGS", "MoE", "dense_reference", "expert_from_row", "expert_layout"]

#: How tokens reach experts (see the module's note).
GATINGS: tuple[str, ...] = ("dynamic", "static")


class MoE(torch.nn.Module):
    """A mixture-of-experts feed-forward layer (see the module's note).

    Args:
        d_model: the token width D.
        d_hidden: the experts' hidden width.
        num_experts: E.
        top_k: experts per token.
        gating: "dynamic" or "static".
        capacity_factor: static gating's capacity multiplier.
        buffer: an :class:`~recengine.moe.ExpertBuffer` to serve the experts from (inference).

    Input ``[..., D]``; output the same shape. After a forward, ``last_routing`` holds the
    ``[S, top_k]`` expert ids of the batch's tokens and ``last_dropped`` how many token
    choices static gating dropped.
    """

    def __init__(self, d_model: int, d_hidden: int, num_experts: int, top_k: int = 2,
                 gating: str = "dynamic", capacity_factor: float = 1.0,
                 buffer: Optional[Any] = None) -> None:
        super().__init__()
        if min(d_model, d_hidden, num_experts) < 1:
            raise ValueError("d_model, d_hidden and num_experts must be >= 1")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
        if gating not in GATINGS:
            raise ValueError(f"unknown gating {gating!r}; expected one of {', '.join(GATINGS)}")
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be positive, got {capacity_factor}")
        self.d_model, self.d_hidden, self.num_experts = d_model, d_hidden, num_experts
        self.top_k, self.gating, self.capacity_factor = top_k, gating, float(capacity_factor)
        self.gate = torch.nn.Linear(d_model, num_experts, bias=False)
        # Every expert's W1, b1, W2, b2 packed in one row, each part starting on a 64-byte
        # boundary: the buffer's slots hold the same rows, so an expert computes bit for bit
        # the same from either (matrix kernels pick code paths by alignment).
        self._layout = expert_layout(d_model, d_hidden)
        self.experts = torch.nn.Parameter(torch.zeros(num_experts, self._layout["size"]))
        bound1, bound2 = 1 / math.sqrt(d_model), 1 / math.sqrt(d_hidden)
        with torch.no_grad():
            self.w1.uniform_(-bound1, bound1)
            self.w2.uniform_(-bound2, bound2)
        self.last_routing: Optional[Tensor] = None
        self.last_dropped = 0
        self.buffer = None
        if buffer is not None:
            self.attach_buffer(buffer)

    def _part(self, rows: Tensor, name: str) -> Tensor:
        start, shape = self._layout[name]
        n = math.prod(shape)
        return rows[..., start:start + n].unflatten(-1, shape)

    @property
    def w1(self) -> Tensor:
        """``[E, d_model, d_hidden]`` (a view of :attr:`experts`)."""
        return self._part(self.experts, "w1")

    @property
    def b1(self) -> Tensor:
        """``[E, d_hidden]``."""
        return self._part(self.experts, "b1")

    @property
    def w2(self) -> Tensor:
        """``[E, d_hidden, d_model]``."""
        return self._part(self.experts, "w2")

    @property
    def b2(self) -> Tensor:
        """``[E, d_model]``."""
        return self._part(self.experts, "b2")

    def attach_buffer(self, buffer: Any) -> None:
        """Serve the experts from ``buffer`` (it packs the current weights into its store)."""
        buffer.bind(self)
        self.buffer = buffer

    def detach_buffer(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
        self.buffer = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each token's ``top_k`` expert ids ``[S, k]`` (int64) and weights ``[S, k]``."""
        probs = self.gate(x).softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return experts, weights / weights.sum(dim=-1, keepdim=True)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on tokens ``x`` ``[n, D]``, from the layer's own weights."""
        return expert_from_row(self.experts[e], self._layout, x)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        if shape[-1] != self.d_model:
            raise ValueError(f"the input's last dimension is {shape[-1]}, expected "
                             f"d_model={self.d_model}")
        tokens = x.reshape(-1, self.d_model)
        experts, weights = self.route(tokens)
        self.last_routing = experts.detach()
        if self.gating == "static":
            if self.buffer is not None:
                raise ValueError("an expert buffer serves dynamic gating (static gating runs "
                                 "every expert on its padded capacity)")
            out = self._static(tokens, experts, weights)
        elif self.buffer is not None:
            if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
                raise RuntimeError("an expert buffer serves inference: call the layer under "
                                   "torch.no_grad() (or detach the buffer to train)")
            out = self.buffer.run(self, tokens, experts, weights)
            self.last_dropped = 0
        else:
            out = dispatch_dynamic(tokens, experts, weights, self.num_experts, self.expert)
            self.last_dropped = 0
        return out.reshape(shape)

    def capacity(self, num_tokens: int) -> int:
        """Static gating's per-expert capacity for ``num_tokens`` tokens."""
        return max(1, math.ceil(self.capacity_factor * num_tokens * self.top_k
                                / self.num_experts))

    def _static(self, x: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        s, e, k = x.shape[0], self.num_experts, self.top_k
        c = self.capacity(s)
        dispatch, combine, dropped = static_masks(experts, weights, e, c)
        self.last_dropped = dropped
        xin = torch.einsum("sec,sd->ecd", dispatch, x)
        h = torch.relu(torch.einsum("ecd,edh->ech", xin, self.w1) + self.b1[:, None, :])
        y = torch.einsum("ech,ehd->ecd", h, self.w2) + self.b2[:, None, :]
        del k
        return torch.einsum("sec,ecd->sd", combine, y)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_hidden={self.d_hidden}, "
                f"num_experts={self.num_experts}, top_k={self.top_k}, gating={self.gating!r}"
                + (f", capacity_factor={self.capacity_factor}" if self.gating == "static"
                   else "") + (", buffered" if self.buffer is not None else ""))


def expert_layout(d_model: int, d_hidden: int) -> dict[str, Any]:
    """Where W1, b1, W2 and b2 start in a packed expert row (each on a 16-float boundary) and
    their shapes, and the row's length (``"size"``, a multiple of 16 floats)."""
    out: dict[str, Any] = {}
    start = 0
    for name, shape in (("w1", (d_model, d_hidden)), ("b1", (d_hidden,)),
                        ("w2", (d_hidden, d_model)), ("b2", (d_model,))):
        out[name] = (start, shape)
        start += -(-math.prod(shape) // 16) * 16
    out["size"] = start
    return out


def expert_from_row(row: Tensor, layout: dict[str, Any], x: Tensor) -> Tensor:
    """The expert whose packed weights are ``row`` on tokens ``x``."""
    def part(name: str) -> Tensor:
        start, shape = layout[name]
        return row[start:start + math.prod(shape)].view(shape)

    return torch.relu(x @ part("w1") + part("b1")) @ part("w2") + part("b2")


def dispatch_dynamic(x: Tensor, experts: Tensor, weights: Tensor, num_experts: int,
                     expert: Callable[[int, Tensor], Tensor],
                     order: Optional[list[int]] = None, out: Optional[Tensor] = None) -> Tensor:
    """Dynamic gating: sort the ``[S, k]`` choices by expert, run each expert on exactly its
    tokens (``expert(e, x[tokens])``), and add the weighted outputs back per token into
    ``out`` (default: new zeros). ``order`` limits and orders the experts run (default: every
    routed expert, by id); running the experts in rounds into one ``out`` adds exactly as one
    call does."""
    k = experts.shape[1]
    flat = experts.reshape(-1)
    sort = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    w = weights.reshape(-1)
    out = torch.zeros_like(x) if out is None else out
    for e in (order if order is not None else [e for e in range(num_experts) if counts[e]]):
        picks = sort[starts[e]:starts[e + 1]]
        if picks.numel() == 0:
            continue
        tok = picks // k
        out.index_add_(0, tok, expert(e, x[tok]) * w[picks, None].to(x.dtype))
    return out


def static_masks(experts: Tensor, weights: Tensor, num_experts: int, capacity: int
                 ) -> tuple[Tensor, Tensor, int]:
    """GShard's dispatch ``[S, E, C]`` (0/1) and combine (weights) masks: choice ``j`` of every
    token is placed after all choices ``< j``, in token order, up to ``capacity`` per expert;
    also how many choices were dropped."""
    s, k = experts.shape
    dispatch = experts.new_zeros((s, num_experts, capacity), dtype=weights.dtype)
    combine = torch.zeros_like(dispatch)
    filled = torch.zeros(num_experts, dtype=torch.long, device=experts.device)
    dropped = 0
    for j in range(k):
        onehot = torch.nn.functional.one_hot(experts[:, j], num_experts)  # [S, E]
        pos = torch.cumsum(onehot, dim=0) - 1 + filled  # position of each token in its expert
        mine = (pos * onehot).sum(dim=1)  # [S]
        keep = mine < capacity
        dropped += int((~keep).sum())
        rows = torch.nonzero(keep).reshape(-1)
        dispatch[rows, experts[rows, j], mine[rows]] = 1.0
        combine[rows, experts[rows, j], mine[rows]] = weights[rows, j]
        filled = filled + onehot.sum(dim=0)
    return dispatch, combine, dropped


def dense_reference(layer: MoE, x: Tensor) -> Tensor:
    """Every expert on every token, combined by the top-k weights: what dynamic gating
    computes, done the slow obvious way (for tests)."""
    tokens = x.reshape(-1, layer.d_model)
    experts, weights = layer.route(tokens)
    every = torch.stack([layer.expert(e, tokens) for e in range(layer.num_experts)], dim=1)
    picked = every[torch.arange(tokens.shape[0])[:, None], experts]  # [S, k, D]
    return (picked * weights[..., None]).sum(dim=1).reshape(x.shape)
