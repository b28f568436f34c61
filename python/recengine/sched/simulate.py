"""A discrete-event simulator of a recommendation server, fed by profiled latency curves.

Queries arrive (times in seconds, sizes in items); a query at or above the offload threshold
goes whole to the accelerator (one FIFO device), any other is split into ``ceil(N / b)``
sub-requests that join one FIFO ready queue served by ``cores`` identical cores, each
sub-request taking ``cpu(size)`` ms, or a time drawn from the curve's profiled spread around
that median (:meth:`LatencyCurve.sample`, seeded). A query's latency is the end of its last
sub-request minus its arrival. Queues are bounded: a query whose sub-requests do not fit is
shed (its latency is ``inf``). The simulation is exact for this model and deterministic for a seed.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Optional

import numpy as np

from ..workload import QuerySizes
from .latency import LatencyCurve
from .result import Policy, RunResult
from .stream import QueryStream

__all__ = ["SimulatedServer", "simulate"]


def simulate(arrivals_s: np.ndarray, sizes: np.ndarray, policy: Policy, cpu: LatencyCurve,
             cores: int, accelerator: Optional[LatencyCurve] = None,
             queue_capacity: int = 4096, warmup: float = 0.1,
             part_ms: Optional[dict[tuple[int, int], float]] = None,
             rng: Optional[np.random.Generator] = None) -> RunResult:
    """Serve queries arriving at ``arrivals_s`` (non-decreasing) of ``sizes`` items.

    Args:
        arrivals_s, sizes: ``[Q]`` arrival times (s) and query sizes (items).
        policy: batch size and offload threshold.
        cpu: one core's latency curve.
        cores: cores serving sub-requests.
        accelerator: the accelerator's latency curve (needed when the policy offloads).
        queue_capacity: the most sub-requests (or accelerator queries) waiting at once.
        warmup: the leading fraction of queries left out of the percentiles.
        part_ms: measured times of sub-requests by (query, part), replacing the curve's (to
            replay a real run's service times through the queueing model).
        rng: draws each sub-request's time from ``cpu``'s spread when the curve has one;
            without it (or a spread) every sub-request of a size takes the curve's median.

    Example::

        >>> cpu = LatencyCurve((1, 1024), (1.0, 1.0))
        >>> r = simulate(np.array([0.0, 0.0]), np.array([10, 10]), Policy(5), cpu, 2)
        >>> r.latency_ms.tolist()  # two sub-requests each: the second query waits 1 ms
        [1.0, 2.0]
    """
    if cores < 1:
        raise ValueError(f"a server needs at least one core, got {cores}")
    if queue_capacity < 1:
        raise ValueError(f"the queue must hold at least one request, got {queue_capacity}")
    if policy.offload_threshold is not None and accelerator is None:
        raise ValueError("the policy offloads but no accelerator latency curve was given")
    arrivals_ms = np.asarray(arrivals_s, dtype=np.float64) * 1e3
    sizes = np.asarray(sizes, dtype=np.int64)
    if arrivals_ms.shape != sizes.shape or arrivals_ms.ndim != 1:
        raise ValueError("arrivals and sizes must be 1-D arrays of one length")
    b = policy.batch_size
    # Service times: full sub-requests (query i's are full_ms[first[i]:first[i + 1]]), and
    # each query's last one.
    n_parts = -(-sizes // b)
    last_size = sizes - (n_parts - 1) * b
    full_count = np.maximum(n_parts - 1, 0)
    first = np.concatenate(([0], np.cumsum(full_count)))
    if rng is not None and cpu.spread:
        full_ms = cpu.sample(np.full(int(first[-1]), b), rng.random(int(first[-1])))
        last_ms = cpu.sample(last_size, rng.random(sizes.size))
    else:
        full_ms = np.full(int(first[-1]), cpu(b))
        last_ms = cpu.many(last_size)
    acc_ms = accelerator.many(sizes) if accelerator is not None else None
    # Python lists: the event loop below indexes them once per sub-request.
    full_at, first_at, last_at = full_ms.tolist(), first.tolist(), last_ms.tolist()
    free = [0.0] * cores  # when each core is next free (a heap)
    waiting: deque[float] = deque()  # start times of queued sub-requests, non-decreasing
    acc_free = 0.0
    acc_waiting: deque[float] = deque()
    latency = np.empty(sizes.size)
    shed = offloaded = 0
    thr = policy.offload_threshold
    for i in range(sizes.size):
        t = arrivals_ms[i]
        n = int(sizes[i])
        if thr is not None and n >= thr and acc_ms is not None:
            while acc_waiting and acc_waiting[0] <= t:
                acc_waiting.popleft()
            if len(acc_waiting) >= queue_capacity:
                latency[i] = np.inf
                shed += 1
                continue
            start = max(t, acc_free)
            acc_free = start + acc_ms[i]
            acc_waiting.append(start)
            latency[i] = acc_free - t
            offloaded += 1
            continue
        parts = -(-n // b)
        while waiting and waiting[0] <= t:
            waiting.popleft()
        if len(waiting) + parts > queue_capacity:
            latency[i] = np.inf
            shed += 1
            continue
        end = t
        for k in range(parts):
            start = max(t, free[0])
            took = last_at[i] if k == parts - 1 else full_at[first_at[i] + k]
            if part_ms is not None:
                took = part_ms.get((i, k), took)
            finish = start + took
            heapq.heapreplace(free, finish)
            if start > t:
                waiting.append(start)
            end = max(end, finish)
        latency[i] = end - t
    span = (float(arrivals_ms[-1]) / 1e3) if sizes.size else 0.0
    on_cpu = sizes < thr if thr is not None else np.ones(sizes.size, dtype=bool)
    work = float(full_ms[np.repeat(on_cpu, full_count)].sum() + last_ms[on_cpu].sum())
    util = work / (cores * span * 1e3) if span > 0 else float("nan")
    if acc_ms is not None and thr is not None and span > 0:
        util = max(util, float(acc_ms[~on_cpu].sum()) / (span * 1e3))
    return RunResult(latency, shed, offloaded, span, int(sizes.size * warmup), util)


class SimulatedServer(QueryStream):
    """The simulator as a :class:`~.search.Backend`: runs of a seeded workload
    (:class:`~.stream.QueryStream`) on ``cores`` cores of latency curve ``cpu``, with an
    optional accelerator. A run lasts at least ``span_s`` simulated seconds (more queries at
    high rates, at most ``max_queries``), so that a rate the server cannot sustain shows in
    its tail. Every sub-request of a size takes the curve's median; with ``spread=True``, and
    a curve that carries a profiled spread, each one's time is drawn from it instead, with the
    same draws at every rate of one policy.

    Example::

        >>> sim = SimulatedServer(LatencyCurve((1, 1024), (0.5, 50.0)), cores=16)
        >>> sim.run(Policy(64), rate_qps=100.0).p95 < 10
        True
    """

    def __init__(self, cpu: LatencyCurve, cores: int, accelerator: Optional[LatencyCurve] = None,
                 sizes: Optional[QuerySizes] = None, queries: int = 2000, seed: int = 0,
                 process: str = "poisson", queue_capacity: int = 4096, span_s: float = 0.0,
                 max_queries: int = 200_000, spread: bool = False) -> None:
        super().__init__(cpu, cores, sizes, queries, seed, process, span_s, max_queries)
        self.spread = spread and bool(cpu.spread)
        self.accelerator = accelerator
        self.queue_capacity = queue_capacity
        self.has_accelerator = accelerator is not None
        self.confirm = 0  # deterministic: a run repeated is the same run

    def run(self, policy: Policy, rate_qps: float) -> RunResult:
        arrivals, sizes = self.draw(rate_qps)
        rng = np.random.default_rng([self.seed, 1]) if self.spread else None
        return simulate(arrivals, sizes, policy, self.curve, self.cores, self.accelerator,
                        self.queue_capacity, rng=rng)
