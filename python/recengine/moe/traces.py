"""Routing traces: which experts each batch of an MoE layer routes its tokens to.

A trace is a list of ``[S, k]`` int64 arrays, one per batch (token ``s``'s ``k`` experts).
:func:`record` runs a real layer and keeps what its gate chose; :func:`synthetic` draws traces
with the two properties that make buffering work or fail:

* skew: each token's experts follow a Zipf law over the experts, ``P(rank r) ~ 1 / r**zipf_s``
  (``zipf_s=0``: uniform), the ranking being a fixed random permutation of the experts;
* temporal locality: with probability ``locality`` a token draws its expert from the experts
  the previous batch used (uniformly among them) instead of from the Zipf law, so that
  consecutive batches share experts (``locality=0``: independent batches).

Example::

    >>> t = synthetic(num_experts=16, batches=4, tokens=32, top_k=2, seed=0)
    >>> len(t), t[0].shape
    (4, (32, 2))
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

__all__ = ["active_sets", "expert_loads", "record", "synthetic"]


def synthetic(num_experts: int, batches: int, tokens: int, top_k: int = 2,
              zipf_s: float = 1.0, locality: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """A synthetic trace (see the module's note): ``batches`` arrays ``[tokens, top_k]`` of
    distinct experts per token."""
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
    if batches < 1 or tokens < 1:
        raise ValueError("batches and tokens must be >= 1")
    if zipf_s < 0 or not 0 <= locality <= 1:
        raise ValueError("zipf_s must be >= 0 and locality in [0, 1]")
    rng = np.random.default_rng(seed)
    ranking = rng.permutation(num_experts)
    p = 1.0 / np.arange(1, num_experts + 1) ** zipf_s
    p = p / p.sum()
    out: list[np.ndarray] = []
    previous: np.ndarray = np.zeros(0, dtype=np.int64)
    for _ in range(batches):
        batch = np.empty((tokens, top_k), dtype=np.int64)
        for s in range(tokens):
            chosen: list[int] = []
            while len(chosen) < top_k:
                if previous.size and rng.random() < locality:
                    e = int(previous[rng.integers(previous.size)])
                else:
                    e = int(ranking[rng.choice(num_experts, p=p)])
                if e not in chosen:
                    chosen.append(e)
            batch[s] = chosen
        out.append(batch)
        previous = np.unique(batch)
    return out


def record(layer: Any, inputs: Iterable[torch.Tensor]) -> list[np.ndarray]:
    """Run ``layer`` (an :class:`~recengine.moe.MoE`) on each input under ``torch.no_grad()``
    and keep the ``[S, k]`` experts its gate chose per batch."""
    out = []
    with torch.no_grad():
        for x in inputs:
            layer(x)
            out.append(layer.last_routing.cpu().numpy().astype(np.int64))
    return out


def active_sets(trace: Sequence[np.ndarray]) -> list[list[int]]:
    """Each batch's distinct experts, ascending (what a buffer must make resident)."""
    return [np.unique(b).tolist() for b in trace]


def expert_loads(trace: Sequence[np.ndarray], num_experts: int) -> np.ndarray:
    """Token choices per expert over the trace, as fractions ``[E]`` summing to 1."""
    counts = np.zeros(num_experts, dtype=np.float64)
    for b in trace:
        counts += np.bincount(np.asarray(b).reshape(-1), minlength=num_experts)
    total = counts.sum()
    return counts / total if total else counts
