"""Latency curves: how long one core (or an accelerator) takes to run a batch of ``b`` items,
profiled at a few batch sizes and interpolated between them: linearly in the batch size (a
CPU forward's cost grows about linearly between nearby sizes), or in ``log(batch)`` as
DeepRecSys models its accelerator (R3)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["ACCELERATOR_BATCHES", "PROFILE_BATCHES", "LatencyCurve", "profile"]

#: The batch sizes of R3's accelerator latency model.
ACCELERATOR_BATCHES: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
#: The batch sizes a CPU curve is profiled at by default: R3's, and more points where
#: queries' sizes and DeepRecSched's batch sizes lie.
PROFILE_BATCHES: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class LatencyCurve:
    """Milliseconds to run a batch, measured at ``batches`` (increasing) as ``ms``.

    Between two points the latency is linear in the batch (``interpolation="linear"``) or in
    ``log(batch)`` (``"log"``, R3's accelerator model); past the last point it grows in
    proportion to the batch (the per-item cost of the largest batch); below the first it is
    the first point's.

    Example::

        >>> c = LatencyCurve((1, 4, 16), (1.0, 2.0, 5.0), interpolation="log")
        >>> c(2), c(16), c(32)
        (1.5, 5.0, 10.0)
        >>> LatencyCurve((1, 4, 16), (1.0, 2.0, 5.0))(10)
        3.5
    """

    batches: tuple[int, ...]
    ms: tuple[float, ...]
    label: str = ""
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        if len(self.batches) != len(self.ms) or not self.batches:
            raise ValueError("a latency curve needs as many latencies as batch sizes (>= 1)")
        if any(b < 1 for b in self.batches) or any(
                b >= c for b, c in zip(self.batches, self.batches[1:])):
            raise ValueError(f"batch sizes must be positive and increasing, got {self.batches}")
        if any(not (math.isfinite(m) and m > 0) for m in self.ms):
            raise ValueError(f"latencies must be positive, got {self.ms}")
        if self.interpolation not in ("linear", "log"):
            raise ValueError(f"interpolation is 'linear' or 'log', got {self.interpolation!r}")

    def __call__(self, batch: float) -> float:
        """Latency in ms of a batch of ``batch`` items (``batch >= 1``)."""
        return float(self.many(np.array([batch]))[0])

    def many(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`__call__` for an array of batch sizes."""
        batch = np.maximum(np.asarray(batch, dtype=np.float64), 1.0)
        points = np.asarray(self.batches, dtype=np.float64)
        if self.interpolation == "log":
            inside = np.interp(np.log(batch), np.log(points), self.ms)
        else:
            inside = np.interp(batch, points, self.ms)
        return np.where(batch >= self.batches[-1], self.ms[-1] * batch / self.batches[-1],
                        inside)

    def scaled(self, factor: float, label: Optional[str] = None) -> LatencyCurve:
        """Every latency times ``factor``."""
        return LatencyCurve(self.batches, tuple(m * factor for m in self.ms),
                            self.label if label is None else label, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        return {"batches": list(self.batches), "ms": list(self.ms), "label": self.label,
                "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, d: dict[str, Any], interpolation: str = "linear") -> LatencyCurve:
        """From :meth:`to_dict`'s form (``interpolation`` when the dict names none)."""
        return cls(tuple(int(b) for b in d["batches"]), tuple(float(m) for m in d["ms"]),
                   str(d.get("label", "")), str(d.get("interpolation", interpolation)))


def profile(run: Callable[[int], Any], batches: Sequence[int] = PROFILE_BATCHES,
            repeats: int = 5, budget_s: float = 2.0, label: str = "") -> LatencyCurve:
    """Time ``run(batch)`` at each batch size: the median of up to ``repeats`` runs after one
    warm-up, fewer when a batch size's runs would pass ``budget_s``.

    Example::

        >>> c = profile(lambda b: sum(range(b)), batches=(1, 64), repeats=2)
        >>> c.batches
        (1, 64)
    """
    ms = []
    for b in batches:
        run(b)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max(repeats, 1):
            t0 = time.perf_counter()
            run(b)
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - start > budget_s:
                break
        ms.append(max(float(np.median(times)), 1e-6))
    return LatencyCurve(tuple(batches), tuple(ms), label)
