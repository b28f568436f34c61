"""Expert placement across devices for load balance (arXiv 2303.06182).

Experts are spread over ``num_devices`` devices, ``capacity`` each (default: an even share).
:func:`place` assigns them greedily by historical load: heaviest expert first, each to the
least-loaded device with room. ``method="anticorrelation"`` adds, for each candidate device,
half the Pearson correlation of the expert's per-batch activity with the activity of the
experts already there, times the mean expert load, so experts that fire together are kept
apart. :func:`max_device_load` measures a placement on a trace: per batch, the busiest
device's share of the token choices, averaged over the batches.

Example::

    >>> import numpy as np
    >>> from recengine.moe.placement import place
    >>> place(np.array([0.4, 0.3, 0.2, 0.1]), num_devices=2)
    [0, 1, 1, 0]
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["METHODS", "blocked", "coactivation", "max_device_load", "place"]

#: Placement methods of :func:`place`.
METHODS: tuple[str, ...] = ("greedy", "anticorrelation")


def blocked(num_experts: int, num_devices: int) -> list[int]:
    """The default placement: contiguous blocks of experts per device."""
    per = math.ceil(num_experts / num_devices)
    return [e // per for e in range(num_experts)]


def coactivation(trace: Sequence[np.ndarray], num_experts: int) -> np.ndarray:
    """Pearson correlation ``[E, E]`` of the experts' per-batch token counts (0 where an
    expert never varies)."""
    counts = np.stack([np.bincount(np.asarray(b).reshape(-1), minlength=num_experts)
                       for b in trace]).astype(np.float64)
    centered = counts - counts.mean(axis=0)
    norm = np.sqrt((centered ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centered.T @ centered) / np.outer(norm, norm)
    return np.nan_to_num(corr)


def place(load: Sequence[float], num_devices: int, capacity: Optional[int] = None,
          method: str = "greedy", correlation: Optional[np.ndarray] = None) -> list[int]:
    """Each expert's device (see the module's note). ``load``: historical load per expert
    (any scale); ``correlation``: ``[E, E]`` for ``method="anticorrelation"`` (see
    :func:`coactivation`)."""
    load = np.asarray(load, dtype=np.float64)
    e = load.size
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    cap = math.ceil(e / num_devices) if capacity is None else capacity
    if cap * num_devices < e:
        raise ValueError(f"{num_devices} devices of {cap} experts cannot hold {e} experts")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "anticorrelation":
        if correlation is None or np.shape(correlation) != (e, e):
            raise ValueError("anticorrelation needs the [E, E] correlation (coactivation)")
    mean = float(load.mean()) if e else 0.0
    device_load = np.zeros(num_devices)
    members: list[list[int]] = [[] for _ in range(num_devices)]
    out = [0] * e
    for x in sorted(range(e), key=lambda i: -load[i]):
        best, best_score = -1, math.inf
        for d in range(num_devices):
            if len(members[d]) >= cap:
                continue
            score = device_load[d] + load[x]
            if method == "anticorrelation" and members[d]:
                assert correlation is not None
                score += 0.5 * float(correlation[x, members[d]].sum()) * mean
            if score < best_score:
                best, best_score = d, score
        out[x] = best
        members[best].append(x)
        device_load[best] += load[x]
    return out


def max_device_load(placement: Sequence[int], trace: Sequence[np.ndarray]) -> float:
    """Per batch, the busiest device's share of the batch's token choices, averaged."""
    dev = np.asarray(placement)
    shares = []
    for b in trace:
        flat = np.asarray(b).reshape(-1)
        if flat.size:
            counts = np.bincount(dev[flat], minlength=int(dev.max()) + 1)
            shares.append(counts.max() / flat.size)
    return float(np.mean(shares)) if shares else 0.0
