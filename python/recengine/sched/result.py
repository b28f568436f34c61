"""What one run of a query stream gives: per-query latency, shed queries, tail percentiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Policy", "RunResult"]


@dataclass(frozen=True)
class Policy:
    """How a server runs a query (DeepRecSched's knobs): split into sub-requests of at most
    ``batch_size`` items, run in parallel on the cores; a query of ``offload_threshold``
    items or more goes whole to the accelerator (``None``: never)."""

    batch_size: int
    offload_threshold: Optional[int] = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"the batch size must be at least 1, got {self.batch_size}")
        if self.offload_threshold is not None and self.offload_threshold < 1:
            raise ValueError(f"the offload threshold must be at least 1, got "
                             f"{self.offload_threshold}")

    def describe(self) -> str:
        off = "never" if self.offload_threshold is None else f">= {self.offload_threshold}"
        return f"batch {self.batch_size}, offload {off}"


@dataclass
class RunResult:
    """One run: ``latency_ms[i]`` of every query (``inf`` for a shed or failed query), how
    many were shed and failed, how many went to the accelerator, and the run's span in
    seconds. Every query is one of served (a finite latency), shed or failed. Percentiles skip
    the first ``warmup`` queries (the system starts empty). ``utilization`` is the offered
    work over the cores' capacity where known (a simulation): at 1 or more the queue grows
    without bound however short the run."""

    latency_ms: np.ndarray
    shed: int = 0
    offloaded: int = 0
    span_s: float = 0.0
    warmup: int = 0
    utilization: float = float("nan")
    #: Queries that failed (a worker process died serving them); their latency is ``inf``.
    failed: int = 0

    def __post_init__(self) -> None:
        self.latency_ms = np.asarray(self.latency_ms, dtype=np.float64)

    @property
    def queries(self) -> int:
        return int(self.latency_ms.size)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of latency in ms (``inf`` when shed queries reach it)."""
        tail = self.latency_ms[self.warmup:]
        if tail.size == 0:
            return float("nan")
        return float(np.quantile(tail, q / 100, method="higher"))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def meets(self, target_ms: float) -> bool:
        """Whether p95 is within ``target_ms``, nothing was shed and the load is sustainable."""
        return self.shed == 0 and self.failed == 0 and not self.utilization >= 1.0 \
            and self.p95 <= target_ms

    @property
    def achieved_qps(self) -> float:
        """Queries served per second of the run."""
        return (self.queries - self.shed - self.failed) / self.span_s if self.span_s > 0 else 0.0
