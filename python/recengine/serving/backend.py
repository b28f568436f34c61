"""The real server as a :class:`recengine.sched.Backend`: runs of a seeded workload."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..models import RecModel
from ..sched.latency import PROFILE_BATCHES, LatencyCurve, profile
from ..sched.result import Policy, RunResult
from ..sched.stream import QueryStream
from ..workload import QuerySizes
from .server import Server

__all__ = ["RealServer", "profile_model"]


def profile_model(model: RecModel, batches: Sequence[int] = PROFILE_BATCHES,
                  threads: int = 1, repeats: int = 5, budget_s: float = 1.0,
                  seed: int = 0) -> LatencyCurve:
    """One core's back-to-back latency curve of ``model`` (a forward of a batch with
    ``threads`` torch and recengine threads), measured here. :meth:`Server.profile` measures
    forwards as a server runs them instead (what the simulator is fed).

    Example::

        >>> import recengine.models as rm
        >>> profile_model(rm.build("ncf", scale=0.01), batches=(1, 16), repeats=2).batches
        (1, 16)
    """
    from .. import get_num_threads, set_num_threads

    top = max(batches)
    pool = model.sample_batch(4 * top, seed=seed)
    turn = [0]

    def run(b: int) -> object:
        # A different slice each time, as a server's inputs: no help from warm caches.
        turn[0] = (turn[0] + 1) % 4
        lo = turn[0] * top
        return model(pool.rows(lo, lo + b))

    saved = (torch.get_num_threads(), get_num_threads())
    torch.set_num_threads(threads)
    set_num_threads(threads)
    try:
        with torch.inference_mode():
            return profile(run, batches, repeats, budget_s, label=getattr(model, "name", ""))
    finally:
        torch.set_num_threads(saved[0])
        set_num_threads(saved[1])


class RealServer(QueryStream):
    """A :class:`Server` driven by a seeded workload (:class:`~recengine.sched.stream.
    QueryStream`: the same draws at every rate), each run lasting at least ``span_s`` seconds
    or ``queries`` queries (at most ``max_queries``).

    ``curve`` (a sub-request's latency as the server runs it, :meth:`Server.profile`d when
    not given) only seeds the search's starting rate; every figure comes from the real
    runs.
    """

    def __init__(self, server: Server, sizes: Optional[QuerySizes] = None, queries: int = 300,
                 seed: int = 0, process: str = "poisson", span_s: float = 0.0,
                 max_queries: int = 5000, curve: Optional[LatencyCurve] = None) -> None:
        super().__init__(curve if curve is not None else server.profile(), server.workers,
                         sizes, queries, seed, process, span_s, max_queries)
        self.server = server
        self.has_accelerator = server.accelerator is not None

    def run(self, policy: Policy, rate_qps: float) -> RunResult:
        arrivals, sizes = self.draw(rate_qps)
        return self.server.run(arrivals, sizes, policy)
