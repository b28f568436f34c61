"""The real server as a :class:`recengine.sched.Backend`: runs of a seeded workload."""

from __future__ import annotations

from typing import Optional

from ..sched.controller import RateController
from ..sched.latency import Cpu
from ..sched.result import Policy, RunResult
from ..sched.stream import QueryStream
from ..workload import QuerySizes
from .server import Server

__all__ = ["RealServer"]


class RealServer(QueryStream):
    """A :class:`Server` driven by a seeded workload (:class:`~recengine.sched.stream.
    QueryStream`: the same draws at every rate), each run lasting at least ``span_s`` seconds
    or ``queries`` queries (at most ``max_queries``, the simulator's default: a run cut short
    of its span at a high rate can end before an overloaded server's queue shows in its p95).

    ``curve`` (a sub-request's latency as the server runs it, :meth:`Server.profile`d when
    not given) only seeds the search's starting rate; every figure comes from the real
    runs. A rate that misses the target is run ``confirm`` more times before a search
    counts it as a miss (a real server has rare slow stretches).
    """

    def __init__(self, server: Server, sizes: Optional[QuerySizes] = None, queries: int = 300,
                 seed: int = 0, process: str = "poisson", span_s: float = 0.0,
                 max_queries: int = 200_000, curve: Optional[Cpu] = None,
                 confirm: int = 1) -> None:
        if confirm < 0:
            raise ValueError(f"confirm must be non-negative, got {confirm}")
        super().__init__(curve if curve is not None else server.profile(), server.workers,
                         sizes, queries, seed, process, span_s, max_queries)
        self.server = server
        self.has_accelerator = server.accelerator is not None
        self.confirm = confirm

    def run(self, policy: Policy, rate_qps: float) -> RunResult:
        arrivals, sizes = self.draw(rate_qps)
        return self.server.run(arrivals, sizes, policy)

    def run_controlled(self, policy: Policy, controller: RateController) -> RunResult:
        """One run whose rate ``controller`` sets (DeepRecSys's search, :meth:`Server.
        run_controlled`), on this stream's query sizes."""
        sizes = self.controlled_sizes(controller, self.server.queue_capacity)
        return self.server.run_controlled(sizes, policy, controller)
