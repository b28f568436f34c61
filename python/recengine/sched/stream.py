"""The query stream a backend runs: a seeded workload, how many queries a run takes, and
where to start a throughput search."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..workload import QuerySizes, Workload
from .controller import RateController
from .latency import Cpu
from .result import Policy

__all__ = ["QueryStream"]


class QueryStream:
    """Runs of a seeded workload (the same draws at every rate, so searches compare like with
    like) on ``cores`` cores whose sub-requests take ``curve``: each run lasts at least
    ``span_s`` seconds or ``queries`` queries, at most ``max_queries``.

    Example::

        >>> from recengine.sched import LatencyCurve
        >>> s = QueryStream(LatencyCurve((1, 1024), (1.0, 1.0)), cores=4, queries=100)
        >>> a, sizes = s.draw(50.0)
        >>> len(a), bool(s.largest_query() >= sizes.max())
        (100, True)
    """

    def __init__(self, curve: Cpu, cores: int, sizes: Optional[QuerySizes] = None,
                 queries: int = 2000, seed: int = 0, process: str = "poisson",
                 span_s: float = 0.0, max_queries: int = 200_000) -> None:
        if cores < 1:
            raise ValueError(f"a server needs at least one core, got {cores}")
        if queries < 10:
            raise ValueError(f"a run needs at least 10 queries, got {queries}")
        self.curve, self.cores = curve, cores
        self.sizes = QuerySizes.lognormal() if sizes is None else sizes
        self.queries, self.seed, self.process = queries, seed, process
        self.span_s, self.max_queries = span_s, max(max_queries, queries)
        self._mean_size = float(self.sizes.sample(np.random.default_rng(seed), 4096).mean())
        self._largest = int(self.draw_sizes(self.max_queries).max())

    def draw(self, rate_qps: float) -> tuple[np.ndarray, np.ndarray]:
        """One run's arrival times (s) and sizes at ``rate_qps``."""
        n = int(min(max(self.queries, rate_qps * self.span_s), self.max_queries))
        return Workload(rate_qps, self.sizes, self.process, self.seed).queries(n)

    def draw_sizes(self, n: int) -> np.ndarray:
        """The sizes of the first ``n`` queries of every run (the same at any rate)."""
        return Workload(1.0, self.sizes, self.process, self.seed).queries(n)[1]

    def controlled_sizes(self, controller: RateController, queue_capacity: int) -> np.ndarray:
        """Enough of this stream's sizes for a run ``controller`` steers: every query it needs
        to complete, plus as many as the queue and the cores can hold in flight."""
        return self.draw_sizes(controller.settings.queries + queue_capacity + self.cores + 1)

    def largest_query(self) -> int:
        """The most items any run's query has (a batch at least this runs queries whole)."""
        return self._largest

    def capacity_hint(self, policy: Policy) -> float:
        """About the rate (queries/s) at which the cores saturate under ``policy``."""
        return 1e3 * self.cores / max(self.query_ms(self.curve, policy), 1e-6)

    def query_ms(self, curve: Cpu, policy: Policy) -> float:
        """About the time (ms) ``curve`` gives the sub-requests of a query of the mean size
        under ``policy``."""
        b = policy.batch_size
        parts = max(self._mean_size / b, 1.0)
        return (parts - 1) * curve(b) + curve(self._mean_size - (parts - 1) * b)
