"""A discrete-event simulator of a recommendation server, fed by profiled latency curves.

Queries arrive (times in seconds, sizes in items); a query at or above the offload threshold
goes whole to the accelerator (one FIFO device), any other is split into ``ceil(N / b)``
sub-requests that join one FIFO ready queue served by ``cores`` identical cores, each
sub-request taking ``cpu(size)`` ms, or a time drawn from the curve's profiled spread around
that median (:meth:`LatencyCurve.sample`, seeded). With curves profiled at several loads
(:class:`CurvesByLoad`), a run takes the curve of the load its queries put on the cores
(:meth:`CurvesByLoad.settle`). A query's latency is the end of its last
sub-request minus its arrival. Queues are bounded: a query whose sub-requests do not fit is
shed (its latency is ``inf``). The simulation is exact for this model and deterministic for a seed.

With a :class:`DeviceStage`, part of every sub-request runs on one device the cores share: a
GPU running the dense part after the CPU's lookups, or RecNMP's DIMMs running the lookups
before the CPU's dense part. The core waits for the device (a forward calls it and blocks),
so it is held from the sub-request's start to its end; the device serves one part at a time,
first come (ready) first served without preemption. A GPU stage shares the accelerator with
whole queries offloaded to it.
:func:`simulate_controlled` serves the same model with arrivals at the rate a DeepRecSys controller
sets as queries complete (:mod:`.controller`).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..workload import QuerySizes
from .controller import RateController
from .latency import Cpu, CurvesByLoad, LatencyCurve
from .result import Policy, RunResult
from .stream import QueryStream

__all__ = ["DeviceStage", "SimulatedServer", "simulate", "simulate_controlled"]


@dataclass(frozen=True)
class DeviceStage:
    """Part of every sub-request run on one device the cores share (see the module's docs).

    Attributes:
        curve: the device's time (ms) for a sub-request of each size.
        first: the device part runs before the CPU part (RecNMP's lookups, then the dense
            part on the core) rather than after it (the lookups on the core, then the dense
            part on a GPU).
        accelerator: the device is the accelerator whole offloaded queries run on, and the
            two share its queue.

    Example::

        >>> gpu = DeviceStage(LatencyCurve((1, 1024), (0.5, 0.5)), accelerator=True)
        >>> cpu = LatencyCurve((1, 1024), (1.0, 1.0))
        >>> simulate(np.array([0.0, 0.0]), np.array([8, 8]), Policy(8), cpu, 2,
        ...          stage=gpu).latency_ms.tolist()  # the second waits for the GPU
        [1.5, 2.0]
    """

    curve: LatencyCurve
    first: bool = False
    accelerator: bool = False


def simulate(arrivals_s: np.ndarray, sizes: np.ndarray, policy: Policy, cpu: Cpu,
             cores: int, accelerator: Optional[LatencyCurve] = None,
             queue_capacity: int = 4096, warmup: float = 0.1,
             part_ms: Optional[dict[tuple[int, int], float]] = None,
             rng: Optional[np.random.Generator] = None,
             dispatch_ms: float = 0.0, stage: Optional[DeviceStage] = None) -> RunResult:
    """Serve queries arriving at ``arrivals_s`` (non-decreasing) of ``sizes`` items.

    Args:
        arrivals_s, sizes: ``[Q]`` arrival times (s) and query sizes (items).
        policy: batch size and offload threshold.
        cpu: one core's latency curve, or curves by load (the run takes the curve of the
            load it puts on the cores over its span, the last arrival's time).
        cores: cores serving sub-requests.
        accelerator: the accelerator's latency curve (needed when the policy offloads).
        queue_capacity: the most sub-requests (or accelerator queries) waiting at once.
        warmup: the leading fraction of queries left out of the percentiles.
        part_ms: measured times of sub-requests by (query, part), replacing the curve's (to
            replay a real run's service times through the queueing model).
        rng: draws each sub-request's time from ``cpu``'s spread when the curve has one;
            without it (or a spread) every sub-request of a size takes the curve's median.
        dispatch_ms: how long after its arrival a query's sub-requests can first start (a
            server's admission and wake-up time). A core that is still busy then starts
            them when it frees, as before; latency still counts from the arrival.
        stage: part of every sub-request on a device the cores share (``cpu`` is then the
            time of the part left on the core).

    Example::

        >>> cpu = LatencyCurve((1, 1024), (1.0, 1.0))
        >>> r = simulate(np.array([0.0, 0.0]), np.array([10, 10]), Policy(5), cpu, 2)
        >>> r.latency_ms.tolist()  # two sub-requests each: the second query waits 1 ms
        [1.0, 2.0]
        >>> simulate(np.array([0.0, 0.0]), np.array([10, 10]), Policy(5), cpu, 2,
        ...          dispatch_ms=0.5).latency_ms.tolist()
        [1.5, 2.5]
    """
    _check(policy, cores, accelerator, queue_capacity)
    if not dispatch_ms >= 0:
        raise ValueError(f"the dispatch delay must be non-negative, got {dispatch_ms}")
    arrivals_ms = np.asarray(arrivals_s, dtype=np.float64) * 1e3
    sizes = np.asarray(sizes, dtype=np.int64)
    if arrivals_ms.shape != sizes.shape or arrivals_ms.ndim != 1:
        raise ValueError("arrivals and sizes must be 1-D arrays of one length")
    span = (float(arrivals_ms[-1]) / 1e3) if sizes.size else 0.0
    if isinstance(cpu, CurvesByLoad):
        cpu = cpu.settle(lambda c: _ServiceTimes(sizes, policy, c, None, None)
                         .utilization(cores, span) if span > 0 else 0.0)[1]
    times = _ServiceTimes(sizes, policy, cpu, accelerator, rng, stage)
    fifo = _Fifo(cores, queue_capacity, stage)
    latency = np.empty(sizes.size)
    for i in range(sizes.size):
        t = arrivals_ms[i]
        parts = times.parts(i)
        if part_ms is not None:
            parts = [part_ms.get((i, k), took) for k, took in enumerate(parts)]
        latency[i] = fifo.serve(t + dispatch_ms, parts, times.offload_ms(i),
                                times.device_parts(i)) - t
    return RunResult(latency, fifo.shed, fifo.offloaded, span, int(sizes.size * warmup),
                     times.utilization(cores, span))


def simulate_controlled(controller: RateController, sizes: np.ndarray, policy: Policy,
                        cpu: Cpu, cores: int,
                        accelerator: Optional[LatencyCurve] = None,
                        queue_capacity: int = 4096,
                        rng: Optional[np.random.Generator] = None,
                        stage: Optional[DeviceStage] = None) -> RunResult:
    """Serve queries of ``sizes`` (in turn) arriving at the rate ``controller`` sets, telling
    it of each query as it completes, until it has taken every step or the sizes run out.
    The arguments are :func:`simulate`'s; returns the whole run (its rate moved). The rate
    moves through the run, so curves by load serve it at the highest profiled load's curve
    (where the controller's search ends).

    Example::

        >>> from recengine.sched.controller import ControllerSettings
        >>> c = RateController(5.0, 1000.0, ControllerSettings(updates=40, last=20))
        >>> cpu = LatencyCurve((1, 1024), (1.0, 1.0))
        >>> r = simulate_controlled(c, np.full(4000, 10), Policy(10), cpu, cores=2)
        >>> c.done, 1000 < c.answer() < 2000  # 2 cores of 1 ms: saturated at 2000 QPS
        (True, True)
    """
    _check(policy, cores, accelerator, queue_capacity)
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1:
        raise ValueError("sizes must be a 1-D array")
    if isinstance(cpu, CurvesByLoad):
        cpu = cpu.curves[-1]
    times = _ServiceTimes(sizes, policy, cpu, accelerator, rng, stage)
    fifo = _Fifo(cores, queue_capacity, stage)
    latency = np.full(sizes.size, np.nan)
    pending: list[tuple[float, float]] = []  # (completion, latency) of queries in flight
    t = 0.0
    served = 0
    for i in range(sizes.size):
        if controller.done:
            break
        t += controller.gap_s() * 1e3
        while pending and pending[0][0] <= t:
            controller.observe(heapq.heappop(pending)[1])
        end = fifo.serve(t, times.parts(i), times.offload_ms(i), times.device_parts(i))
        latency[i] = end - t
        heapq.heappush(pending, (t if end == np.inf else end, latency[i]))
        served = i + 1
    latency = latency[:served]
    span = t / 1e3
    return RunResult(latency, fifo.shed, fifo.offloaded, span, 0,
                     times.utilization(cores, span, served))


def _check(policy: Policy, cores: int, accelerator: Optional[LatencyCurve],
           queue_capacity: int) -> None:
    if cores < 1:
        raise ValueError(f"a server needs at least one core, got {cores}")
    if queue_capacity < 1:
        raise ValueError(f"the queue must hold at least one request, got {queue_capacity}")
    if policy.offload_threshold is not None and accelerator is None:
        raise ValueError("the policy offloads but no accelerator latency curve was given")


class _ServiceTimes:
    """Every sub-request's service time (ms) of a run of ``sizes`` under ``policy``: each of
    a size takes ``cpu``'s median, or a draw from its spread with ``rng``."""

    def __init__(self, sizes: np.ndarray, policy: Policy, cpu: LatencyCurve,
                 accelerator: Optional[LatencyCurve],
                 rng: Optional[np.random.Generator],
                 stage: Optional[DeviceStage] = None) -> None:
        b = policy.batch_size
        self.sizes, self.thr = sizes, policy.offload_threshold
        # Full sub-requests (query i's are full[first[i]:first[i + 1]]), and each query's last.
        n_parts = -(-sizes // b)
        self.full_count = np.maximum(n_parts - 1, 0)
        first = np.concatenate(([0], np.cumsum(self.full_count)))
        if rng is not None and cpu.spread:
            self.full_ms = cpu.sample(np.full(int(first[-1]), b), rng.random(int(first[-1])))
            self.last_ms = cpu.sample(sizes - (n_parts - 1) * b, rng.random(sizes.size))
        else:
            self.full_ms = np.full(int(first[-1]), cpu(b))
            self.last_ms = cpu.many(sizes - (n_parts - 1) * b)
        self.acc_ms = accelerator.many(sizes) if accelerator is not None else None
        # The device parts of a stage: every full sub-request takes the same, the last its own.
        self.dev_full = stage.curve(b) if stage is not None else 0.0
        self.dev_last = (stage.curve.many(sizes - (n_parts - 1) * b) if stage is not None
                         else None)
        self._dev_last = self.dev_last.tolist() if self.dev_last is not None else None
        # Python lists: the event loops index them once per sub-request.
        self._full, self._first, self._last = (self.full_ms.tolist(), first.tolist(),
                                               self.last_ms.tolist())
        self._acc = self.acc_ms.tolist() if self.acc_ms is not None else None
        self._sizes = sizes.tolist()

    def offload_ms(self, i: int) -> Optional[float]:
        """Query ``i``'s time on the accelerator if the policy offloads it, else None."""
        if self.thr is None or self._acc is None or self._sizes[i] < self.thr:
            return None
        return self._acc[i]

    def parts(self, i: int) -> list[float]:
        """Query ``i``'s sub-requests' times, in order."""
        lo = self._first[i]
        out = self._full[lo:self._first[i + 1]]
        out.append(self._last[i])
        return out

    def device_parts(self, i: int) -> Optional[list[float]]:
        """Query ``i``'s sub-requests' device times, in order (None without a stage)."""
        if self._dev_last is None:
            return None
        out = [self.dev_full] * (self._first[i + 1] - self._first[i])
        out.append(self._dev_last[i])
        return out

    def utilization(self, cores: int, span_s: float, served: Optional[int] = None) -> float:
        """The offered work of the first ``served`` queries (all by default) over the cores'
        (or the accelerator's, if busier) capacity in ``span_s``."""
        n = self.sizes.size if served is None else served
        if span_s <= 0 or n == 0:
            return float("nan")
        sizes = self.sizes[:n]
        on_cpu = sizes < self.thr if self.thr is not None else np.ones(n, dtype=bool)
        full = self.full_ms[:int(self.full_count[:n].sum())]
        work = float(full[np.repeat(on_cpu, self.full_count[:n])].sum()
                     + self.last_ms[:n][on_cpu].sum())
        device = 0.0
        if self.dev_last is not None:  # the cores wait for the device: held all the while
            device = float(self.dev_full * self.full_count[:n][on_cpu].sum()
                           + self.dev_last[:n][on_cpu].sum())
        util = max((work + device) / (cores * span_s * 1e3), device / (span_s * 1e3))
        if self.acc_ms is not None and self.thr is not None:
            util = max(util, float(self.acc_ms[:n][~on_cpu].sum()) / (span_s * 1e3))
        return util


class _Fifo:
    """``cores`` identical cores serving one FIFO ready queue of sub-requests, and one FIFO
    accelerator, each queue holding at most ``capacity``; queries are served in arrival order
    and each query's completion is known when it arrives (exact for this model)."""

    def __init__(self, cores: int, capacity: int, stage: Optional[DeviceStage] = None) -> None:
        self.stage_first = stage is not None and stage.first
        self.acc = _Device()
        # A stage's device: the accelerator itself, or one of its own.
        self.device = self.acc if stage is not None and stage.accelerator else _Device()
        self.free = [0.0] * cores  # when each core is next free (a heap)
        self.waiting: deque[float] = deque()  # start times of queued sub-requests, ascending
        self.acc_waiting: list[float] = []  # start times of queued offloads (a heap)
        self.capacity = capacity
        self.shed = self.offloaded = 0

    def serve(self, t: float, parts: list[float], offload_ms: Optional[float],
              device: Optional[list[float]] = None) -> float:
        """Serve a query arriving at ``t`` (ms): whole on the accelerator taking
        ``offload_ms``, or else as sub-requests taking ``parts`` on a core (and ``device`` on
        the stage's device); returns when it completes (``inf`` when shed: its sub-requests
        do not fit in the queue)."""
        if offload_ms is not None:
            acc_waiting = self.acc_waiting
            while acc_waiting and acc_waiting[0] <= t:
                heapq.heappop(acc_waiting)
            if len(acc_waiting) >= self.capacity:
                self.shed += 1
                return np.inf
            end = self.acc.take(t, offload_ms, t)
            # In a gap the device's other parts left, an offload may start before one queued
            # earlier: a heap, not a queue.
            heapq.heappush(acc_waiting, end - offload_ms)
            self.offloaded += 1
            return end
        waiting, free = self.waiting, self.free
        while waiting and waiting[0] <= t:
            waiting.popleft()
        if len(waiting) + len(parts) > self.capacity:
            self.shed += 1
            return np.inf
        end = t
        for k, took in enumerate(parts):
            start = max(t, free[0])
            if device is None:
                finish = start + took
            else:
                if self.stage_first:
                    finish = self.device.take(start, device[k], t) + took
                else:
                    finish = self.device.take(start + took, device[k], t)
            heapq.heapreplace(free, finish)
            if start > t:
                waiting.append(start)
            if finish > end:
                end = finish
        return end


class _Device:
    """One device serving one part at a time: each part takes the earliest idle stretch at or
    after it is ready that fits it (so a part handed out later but ready sooner does not wait
    behind the earlier one: first come, first served by readiness, without preemption).
    Busy stretches that touch are one (an overloaded device is one long stretch), and those
    over by ``now`` are forgotten, so the list stays short."""

    def __init__(self) -> None:
        self.starts: list[float] = []  # busy stretches, ascending and disjoint
        self.ends: list[float] = []

    def take(self, ready: float, took: float, now: float) -> float:
        """Run a part ready at ``ready`` for ``took`` ms; returns its end. ``now``: no later
        part is ready before it."""
        starts, ends = self.starts, self.ends
        if ends and ends[0] <= now:
            gone = bisect.bisect_right(ends, now)
            del starts[:gone], ends[:gone]
        if not ends or ready >= ends[-1]:  # after every busy stretch: the usual case
            if ends and ready == ends[-1]:
                ends[-1] = ready + took
            else:
                starts.append(ready)
                ends.append(ready + took)
            return ready + took
        j = bisect.bisect_right(starts, ready)
        start = max(ready, ends[j - 1]) if j else ready
        while j < len(starts) and starts[j] < start + took:
            start = max(start, ends[j])
            j += 1
        end = start + took
        # Insert [start, end) before stretch j, joining the neighbours it touches.
        if j and ends[j - 1] == start:
            if j < len(starts) and starts[j] == end:
                ends[j - 1] = ends[j]
                del starts[j], ends[j]
            else:
                ends[j - 1] = end
        elif j < len(starts) and starts[j] == end:
            starts[j] = start
        else:
            starts.insert(j, start)
            ends.insert(j, end)
        return end


class SimulatedServer(QueryStream):
    """The simulator as a :class:`~.search.Backend`: runs of a seeded workload
    (:class:`~.stream.QueryStream`) on ``cores`` cores of latency curve ``cpu``, with an
    optional accelerator (``cpu`` may be curves by load: each run takes the curve of the load
    it puts on the cores). A run lasts at least ``span_s`` simulated seconds (more queries at
    high rates, at most ``max_queries``), so that a rate the server cannot sustain shows in
    its tail. Every sub-request of a size takes the curve's median; with ``spread=True``, and
    a curve that carries a profiled spread, each one's time is drawn from it instead, with the
    same draws at every rate of one policy.

    Example::

        >>> sim = SimulatedServer(LatencyCurve((1, 1024), (0.5, 50.0)), cores=16)
        >>> sim.run(Policy(64), rate_qps=100.0).p95 < 10
        True
    """

    def __init__(self, cpu: Cpu, cores: int, accelerator: Optional[LatencyCurve] = None,
                 sizes: Optional[QuerySizes] = None, queries: int = 2000, seed: int = 0,
                 process: str = "poisson", queue_capacity: int = 4096, span_s: float = 0.0,
                 max_queries: int = 200_000, spread: bool = False,
                 stage: Optional[DeviceStage] = None) -> None:
        super().__init__(cpu, cores, sizes, queries, seed, process, span_s, max_queries)
        self.stage = stage
        self.spread = spread and bool(cpu.spread)
        self.accelerator = accelerator
        self.queue_capacity = queue_capacity
        self.has_accelerator = accelerator is not None
        self.confirm = 0  # deterministic: a run repeated is the same run

    def run(self, policy: Policy, rate_qps: float) -> RunResult:
        arrivals, sizes = self.draw(rate_qps)
        return simulate(arrivals, sizes, policy, self.curve, self.cores, self.accelerator,
                        self.queue_capacity, rng=self._rng(), stage=self.stage)

    def capacity_hint(self, policy: Policy) -> float:
        """About the rate at which the cores (held for both parts), or a stage's device,
        saturate."""
        if self.stage is None:
            return super().capacity_hint(policy)
        cpu, device = self.query_ms(self.curve, policy), self.query_ms(self.stage.curve, policy)
        return 1e3 * min(self.cores / max(cpu + device, 1e-6), 1 / max(device, 1e-6))

    def run_controlled(self, policy: Policy, controller: RateController) -> RunResult:
        """One run whose rate ``controller`` sets (DeepRecSys's search,
        :func:`simulate_controlled`), on this stream's query sizes."""
        return simulate_controlled(controller,
                                   self.controlled_sizes(controller, self.queue_capacity),
                                   policy, self.curve, self.cores, self.accelerator,
                                   self.queue_capacity, self._rng(), self.stage)

    def _rng(self) -> Optional[np.random.Generator]:
        return np.random.default_rng([self.seed, 1]) if self.spread else None
