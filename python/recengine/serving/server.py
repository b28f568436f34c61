"""A real recommendation inference server on this machine (DeepRecInfra's serving side).

A dispatcher (the calling thread) replays a query stream in real time: each query is split
into sub-requests of at most ``policy.batch_size`` items that join one bounded ready queue,
or, at or above the policy's offload threshold, goes whole to the accelerator's bounded
queue. Workers (one per core by default) take sub-requests and run real model forwards:
threads of this process, or with ``processes=True`` one process each
(:mod:`recengine.serving.processes`), whose forwards do not queue for one interpreter lock.
Torch's intra-op threads and recengine's threads are set so that workers x threads never
exceeds the cores. A query's latency is the end of its last sub-request minus
its arrival. A query whose sub-requests do not fit in the queue is shed and counted; every
query is accounted for. A worker that raises stops the run with :class:`WorkerError`; a
run that cannot finish by its deadline raises :class:`TimeoutError`: never a hang.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .. import get_num_threads, set_num_threads
from ..models import Batch, RecModel
from ..sched.controller import RateController
from ..sched.latency import PROFILE_BATCHES, CurvesByLoad, LatencyCurve, check_loads
from ..sched.result import Policy, RunResult
from . import allocator
from .accelerator import Accelerator
from .processes import WorkerProcesses

__all__ = ["SWITCH_INTERVAL_S", "Server", "Service", "WorkerError", "idle_before"]

#: The interpreter's thread switch interval while a server runs (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005
#: The most queries one profiling run serves.
PROFILE_MAX_QUERIES = 20_000
#: How long the end of a run waits for its worker threads, all together.
JOIN_GRACE_S = 2.0
#: Worker process deaths a run survives (each failing the query it held and replaced), at
#: least this many and four times the workers; past that it raises WorkerError.
MIN_DEATHS_PER_RUN = 8


class WorkerError(RuntimeError):
    """A worker raised while serving; the original exception is its ``__cause__`` and its
    traceback text is in ``details``."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class Service(NamedTuple):
    """One CPU sub-request of a run, as it finished."""

    #: the query it belongs to (its index in the run)
    query: int
    #: which part of the query it is
    part: int
    #: its items
    items: int
    #: the forward's time, in seconds
    seconds: float
    #: how long its worker could take no other sub-request (s): the forward plus handing it
    #: over and back (for a worker process, from the parent's send to its reading the result)
    held: float
    #: the worker that ran it (0 to ``workers - 1``)
    worker: int = -1
    #: when its worker was given it (s after the run's start): ``held`` counts from here
    start: float = float("nan")


def idle_before(services: Sequence[Service]) -> np.ndarray:
    """``[n]`` seconds each sub-request's worker had been idle when it was given it: since the
    worker's previous sub-request (``inf`` for a worker's first of the run).

    Example::

        >>> s = [Service(0, 0, 8, 0.001, 0.002, 0, 0.0), Service(1, 0, 8, 0.001, 0.002, 0, 0.005)]
        >>> idle_before(s).round(6).tolist()
        [inf, 0.003]
    """
    gaps = np.full(len(services), np.inf)
    last_end: dict[int, float] = {}
    for j in sorted(range(len(services)), key=lambda j: services[j].start):
        r = services[j]
        if r.worker in last_end:
            gaps[j] = r.start - last_end[r.worker]
        last_end[r.worker] = r.start + r.held
    return gaps


class Server:
    """Serve ``model`` with ``workers`` workers (default: one per core).

    Args:
        model: a :mod:`recengine.models` model (inputs are drawn from it once, up front).
        workers: workers running sub-requests on the CPU.
        threads_per_worker: torch and recengine threads each worker's forward uses.
        queue_capacity: the most sub-requests waiting at once (and the accelerator's most
            waiting queries).
        accelerator: where offloaded queries run (see :class:`Accelerator`).
        distribution: the id distribution of the inputs (:data:`recengine.rows.DISTRIBUTIONS`).
        seed: seeds the inputs.
        pool_size: samples of input drawn up front; queries read slices of it (so a query
            has at most this many items).
        processes: run each worker in its own process, on a replica of the model rebuilt
            from the arguments :func:`recengine.models.build` made it with (so each process
            holds its own copy of the tables, and a model changed after ``build`` must be
            saved and rebuilt with ``weights=``). Threads share one interpreter lock, which
            caps a threaded server at a few cores; processes take a few seconds to start.
            Close the server (``close()`` or ``with``) to stop them.
        steady_malloc: fix glibc's malloc thresholds in the worker processes (or, for worker
            threads, in this process) so that a fresh worker runs at its steady speed from
            its first forward (:func:`~recengine.serving.allocator.steady_malloc`).

    Example::

        >>> import recengine.models as rm
        >>> server = Server(rm.build("ncf", scale=0.01), workers=1)
        >>> r = server.run(np.array([0.0, 0.001]), np.array([10, 20]), Policy(8))
        >>> r.queries, r.shed, bool(np.all(r.latency_ms > 0))
        (2, 0, True)
    """

    def __init__(self, model: RecModel, workers: Optional[int] = None,
                 threads_per_worker: int = 1, queue_capacity: int = 4096,
                 accelerator: Optional[Accelerator] = None, distribution: str = "uniform",
                 seed: int = 0, pool_size: int = 2048, processes: bool = False,
                 steady_malloc: bool = True) -> None:
        cores = os.cpu_count() or 1
        if threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        self.workers = max(cores // threads_per_worker, 1) if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"a server needs at least one worker, got {self.workers}")
        if queue_capacity < 1:
            raise ValueError(f"the queue must hold at least one request, got {queue_capacity}")
        build_args = getattr(model, "build_args", None)
        if processes and build_args is None:
            raise ValueError("process workers rebuild the model, so it must come from "
                             "recengine.models.build")
        self.model = model.eval()
        self.threads_per_worker = threads_per_worker
        self.queue_capacity = queue_capacity
        self.accelerator = accelerator
        self.pool: Batch = model.sample_batch(pool_size, distribution=distribution, seed=seed)
        self._forward: Callable[[Batch], object] = self.model
        #: The last run's CPU sub-requests, as they finished.
        self.last_service: list[Service] = []
        #: The sub-requests of the last :meth:`profile`'s final run at each batch size.
        self.profile_services: dict[int, list[Service]] = {}
        self._run_id = 0
        self._procs: Optional[WorkerProcesses] = None
        self._process_mode = processes
        if processes:
            assert build_args is not None
            self._procs = WorkerProcesses(build_args, self.workers, threads_per_worker,
                                          distribution, seed, pool_size, steady_malloc)
        elif steady_malloc:
            allocator.steady_malloc()

    @property
    def worker_pids(self) -> list[Optional[int]]:
        """The worker processes' ids (None for threads, or for a process being replaced)."""
        if self._procs is None:
            return [None] * self.workers
        return self._procs.pids

    @property
    def processes(self) -> bool:
        """Whether the workers are processes (else threads of this process)."""
        return self._process_mode

    def close(self) -> None:
        """Stop the worker processes, if any (a threaded server holds nothing to stop)."""
        if self._procs is not None:
            self._procs.close()
            self._procs = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, arrivals_s: np.ndarray, sizes: np.ndarray, policy: Policy,
            timeout_s: Optional[float] = None, warmup: float = 0.1) -> RunResult:
        """Replay queries arriving at ``arrivals_s`` (seconds from now, non-decreasing) of
        ``sizes`` items under ``policy``; returns every query's latency (``inf`` if shed).

        ``timeout_s`` bounds the whole call, counted from its start (default: the last
        arrival plus 30 s plus 10 ms per query); a run that has not finished by then raises
        ``TimeoutError``, whatever the workers are doing.

        Raises:
            WorkerError: a worker (or the accelerator) raised.
            TimeoutError: the queries did not all finish within ``timeout_s``.
            ValueError: bad arrivals (not finite, negative, decreasing, or later than
                ``timeout_s``), sizes, policy or timeout.
        """
        arrivals = np.asarray(arrivals_s, dtype=np.float64)
        sizes = _sizes(sizes)
        if arrivals.ndim != 1 or arrivals.shape != sizes.shape:
            raise ValueError("arrivals and sizes must be 1-D arrays of one length")
        if not np.isfinite(arrivals).all():
            raise ValueError("arrival times must be finite")
        if arrivals.size and (np.any(np.diff(arrivals) < 0) or arrivals[0] < 0):
            raise ValueError("arrival times must be non-negative and non-decreasing")
        timeout_s = _timeout(timeout_s)
        if timeout_s is not None and arrivals.size and arrivals[-1] >= timeout_s:
            raise ValueError(f"the last query arrives {arrivals[-1]:g} s after the start, past "
                             f"timeout_s={timeout_s:g}: give a longer timeout")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup is the fraction of queries to leave out, in [0, 1); got "
                             f"{warmup}")
        return self._serve(sizes, policy, lambda i, s: float(arrivals[i]), timeout_s, warmup)

    def run_controlled(self, sizes: np.ndarray, policy: Policy, controller: RateController,
                       timeout_s: Optional[float] = None) -> RunResult:
        """Serve queries of ``sizes`` (in turn) arriving at the rate ``controller`` sets
        (DeepRecSys's search): before each arrival the controller is told of every query
        completed since (latency, ``inf`` if shed), and it draws the gap. Arrivals stop when it
        has taken every step (or the sizes run out); the queries in flight then finish. Returns
        every dispatched query's latency. Raises as :meth:`run` does (a controller that asks
        for an arrival past ``timeout_s`` raises ``TimeoutError``)."""
        sizes = _sizes(sizes)
        timeout_s = _timeout(timeout_s)
        told = 0
        last = 0.0

        def arrival(i: int, s: _RunState) -> Optional[float]:
            nonlocal told, last
            done = s.completed
            while told < len(done):  # append is atomic; end and shed are set before it
                j = done[told]
                lost = s.shed[j] or s.failed[j]
                controller.observe(np.inf if lost else (s.end[j] - s.arrival[j]) * 1e3)
                told += 1
            if controller.done:
                return None
            gap = float(controller.gap_s())
            if not (np.isfinite(gap) and gap >= 0):
                raise ValueError(f"the rate controller gave the gap {gap} s; gaps are finite "
                                 "and non-negative")
            last += gap
            return last

        return self._serve(sizes, policy, arrival, timeout_s, 0.0)

    def _serve(self, sizes: np.ndarray, policy: Policy,
               arrival: Callable[[int, _RunState], Optional[float]],
               timeout_s: Optional[float], warmup: float) -> RunResult:
        """Serve queries of ``sizes``, query ``i`` arriving ``arrival(i, state)`` seconds
        after the start (non-decreasing in ``i``; ``None``: no more queries)."""
        if sizes.ndim != 1:
            raise ValueError("sizes must be a 1-D array")
        if sizes.size and (sizes.min() < 1 or sizes.max() > len(self.pool)):
            raise ValueError(f"query sizes must be in [1, {len(self.pool)}]")
        if policy.offload_threshold is not None and self.accelerator is None:
            raise ValueError("the policy offloads but the server has no accelerator")
        if self._process_mode and self._procs is None:
            raise RuntimeError("the server is closed")
        n = sizes.size
        self._run_id += 1
        state = _RunState(n, self.queue_capacity, timeout_s)
        if self._procs is not None:
            self._procs.restart_dead()  # a worker lost in an earlier run, or still starting
            state.idle.extend(k for k in range(len(self._procs)) if not self._procs.busy[k])
            state.deaths_allowed = max(MIN_DEATHS_PER_RUN, 4 * len(self._procs))
        saved = (torch.get_num_threads(), get_num_threads(), sys.getswitchinterval())
        torch.set_num_threads(self.threads_per_worker)
        set_num_threads(self.threads_per_worker)
        # Workers and the dispatcher share the interpreter lock between forwards: hand it
        # over every 0.5 ms rather than 5 ms, or a query's arrival waits on a busy worker.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # A full garbage collection stops every worker for tens of ms in a large process:
        # none during the run (the forwards make no reference cycles).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        threads = [threading.Thread(target=self._worker, args=(state, i), daemon=True,
                                    name=f"recengine-worker-{i}")
                   for i in range(self.workers if self._procs is None else 0)]
        if self.accelerator is not None:
            threads.append(threading.Thread(target=self._accelerator, args=(state,),
                                            daemon=True, name="recengine-accelerator"))
        for t in threads:
            t.start()
        try:
            if self._procs is None:
                self._dispatch(state, arrival, sizes, policy)
                self._wait(state, threads)
            else:
                self._loop(state, arrival, sizes, policy, threads, timeout_s)
        finally:
            with state.cond:
                state.stop = True
                state.cond.notify_all()
                state.done.notify_all()
                state.accel.notify_all()
            # One grace period for all threads together: a worker stuck in a forward must not
            # hold the call (and its TimeoutError) for seconds per thread.
            grace = time.perf_counter() + JOIN_GRACE_S
            for t in threads:
                t.join(timeout=max(grace - time.perf_counter(), 0.0))
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                warnings.warn(f"{', '.join(stuck)} still busy {JOIN_GRACE_S:g} s after the run "
                              "ended (a forward that does not return); left running as daemon "
                              "threads", RuntimeWarning, stacklevel=2)
            if self._procs is not None and state.finished < n:
                self._procs.stop_busy()  # hung or abandoned: replaced at the next run
            torch.set_num_threads(saved[0])
            set_num_threads(saved[1])
            sys.setswitchinterval(saved[2])
            if gc_was_enabled:
                gc.enable()
        if state.error is not None:
            err = WorkerError(f"a worker failed while serving: {state.error!r}", state.details)
            raise err from state.error
        n = state.n
        latency = state.end[:n] - state.arrival[:n]
        latency[state.shed[:n] | state.failed[:n]] = np.inf
        span = float(state.arrival[n - 1]) if n else 0.0
        self.last_service = state.service
        return RunResult(latency * 1e3, int(state.shed.sum()), state.offloaded, span,
                         int(n * warmup), failed=int(state.failed[:n].sum()))

    def profile(self, batches: Sequence[int] = PROFILE_BATCHES, load: Optional[float] = 0.9,
                queries: int = 20, held: bool = True, query_items: int = 164,
                span_s: float = 0.5) -> LatencyCurve:
        """The latency curve of a sub-request as this server runs it: for each batch size
        ``b``, queries of about ``query_items`` items are served in sub-requests of exactly
        ``b`` (so the server hands out as many sub-requests per query as it does for a real
        stream of queries that size) for about ``span_s`` seconds (at least ``queries``
        queries, and eight sub-requests a worker), and the curve takes the median time a
        sub-request held its worker: its forward and its hand-over to and from the worker
        (``held=False``: the forward alone), with the spread of those times around the median
        (:meth:`LatencyCurve.from_samples`) for a simulator to draw from. This sees what
        back-to-back timing of one forward misses: the cores slowing each other down (memory
        bus, caches, clock), workers sharing the interpreter lock, forwards after idle gaps,
        and for worker processes the parent's per-query and per-sub-request work.

        The queries arrive (Poisson) at about ``load`` of the workers' capacity, near where
        a throughput search ends; ``load=None`` sends them all at once (no more than the
        queue holds). The capacity is first guessed from forwards run alone; where the
        workers turn out to be held longer than that, the batch is run again at ``load`` of
        the capacity the run showed (at most twice more), so that the profile does not
        measure an overloaded server. Runs last a time rather than a count of queries: on
        16 cores sixty queries pass in tens of milliseconds, and one slow stretch of the
        machine then moves a batch size's median by half.

        Example::

            >>> import recengine.models as rm
            >>> Server(rm.build("ncf", scale=0.01), workers=1).profile((1, 8), queries=5).batches
            (1, 8)
        """
        if load is not None and not 0 < load <= 1:
            raise ValueError(f"the profiling load must be in (0, 1], got {load}")
        if queries < 1:
            raise ValueError(f"profiling needs at least one query per batch, got {queries}")
        if query_items < 1:
            raise ValueError(f"query_items must be at least 1, got {query_items}")
        if not span_s >= 0:
            raise ValueError(f"span_s must be non-negative, got {span_s}")
        samples: list[list[float]] = []
        self.profile_services = {}
        rng = np.random.default_rng(0)
        for b in batches:
            b = min(b, len(self.pool))
            parts = max(1, min(round(query_items / b), len(self.pool) // b))
            # The workers' capacity in queries/s, first guessed from forwards run alone.
            capacity = self.workers / (parts * self._time_forward(b))
            # A short run is at the mercy of one slow stretch of the machine: serve span_s
            # of queries (and 8 sub-requests a worker) or more.
            least = max(queries, -(-8 * self.workers // parts))
            if load is None:
                n = max(least, min(int(capacity * span_s), PROFILE_MAX_QUERIES,
                                   self.queue_capacity // parts))  # none shed
                self.run(np.zeros(n), np.full(n, parts * b), Policy(b), warmup=0)
            else:
                rate = load * capacity
                for _ in range(3):
                    n = max(least, min(int(rate * span_s), PROFILE_MAX_QUERIES))
                    arrivals = np.cumsum(rng.exponential(1 / rate, n))
                    self.run(arrivals, np.full(n, parts * b), Policy(b), warmup=0)
                    capacity = self.workers / parts / max(
                        float(np.median([r.held for r in self.last_service])), 1e-6)
                    if rate <= 1.15 * load * capacity:
                        break
                    rate = load * capacity
            self.profile_services[b] = list(self.last_service)
            samples.append([max(1e3 * (r.held if held else r.seconds), 1e-6)
                            for r in self.last_service])
        return LatencyCurve.from_samples(batches, samples, getattr(self.model, "name", ""))

    def profile_loads(self, loads: Sequence[float] = (0.3, 0.6, 0.9),
                      **options: Any) -> CurvesByLoad:
        """:meth:`profile` at each of ``loads`` (increasing fractions of the workers'
        capacity), for a simulator to serve each run at the curve of the load it puts on the
        cores: where workers slow each other down the busier the server is, a tight target's
        search ends at a low load, and a curve profiled near saturation underrates it.
        ``options`` go to :meth:`profile`; :attr:`profile_services` keeps the last load's.

        Example::

            >>> import recengine.models as rm
            >>> s = Server(rm.build("ncf", scale=0.01), workers=1)
            >>> s.profile_loads((0.5, 0.9), batches=(1, 8), queries=5, span_s=0).loads
            (0.5, 0.9)
        """
        loads = check_loads(loads)  # before any profiling
        return CurvesByLoad(loads, tuple(self.profile(load=x, **options) for x in loads))

    def _time_forward(self, b: int, repeat: int = 3) -> float:
        """Seconds one forward of ``b`` items takes in this process, alone (at least 10 us)."""
        with torch.inference_mode():
            t0 = time.perf_counter()
            for k in range(repeat):
                lo = k * b % (len(self.pool) - b + 1)
                self._forward(self.pool.rows(lo, lo + b))
            return max((time.perf_counter() - t0) / repeat, 1e-5)

    def _dispatch(self, s: _RunState, arrival: Callable[[int, _RunState], Optional[float]],
                  sizes: np.ndarray, policy: Policy) -> None:
        """Worker threads: admit each query when it is due, sleeping in between."""
        start = time.perf_counter()
        s.t0 = start
        for i in range(sizes.size):
            at = arrival(i, s)
            if at is None:  # no more queries: the run is the ones dispatched
                with s.cond:
                    s.end_arrivals(i)
                return
            s.check_arrival(i, at)
            due = start + at
            while True:
                now = time.perf_counter()
                if now >= due or s.error is not None:
                    break
                time.sleep(min(due - now, 0.05))
            if s.error is not None:
                return
            with s.cond:
                self._admit(s, i, at, int(sizes[i]), policy)

    def _admit(self, s: _RunState, i: int, at: float, n: int, policy: Policy) -> None:
        """Query ``i`` of ``n`` items arrives at ``at`` (s): to the accelerator's queue, or
        split into sub-requests on the ready queue, or shed where its queue is full (call
        holding ``s.cond``)."""
        s.arrival[i] = at
        b, thr = policy.batch_size, policy.offload_threshold
        lo = s.offset if s.offset + n <= len(self.pool) else 0
        s.offset = lo + n
        if thr is not None and n >= thr:
            if len(s.accel_queue) >= s.capacity:
                s.shed[i] = True
                s.finish(i)
            else:
                s.accel_queue.append((i, lo, n))
                s.offloaded += 1
                s.parts[i] = 1
                s.accel.notify()
            return
        parts = -(-n // b)
        if len(s.queue) + parts > s.capacity:
            s.shed[i] = True
            s.finish(i)
            return
        s.parts[i] = parts
        for k in range(parts):
            a = lo + k * b
            s.queue.append((i, k, a, min(b, lo + n - a)))
        if self._procs is None:
            s.cond.notify(parts)
        else:
            self._feed(s)

    def _loop(self, s: _RunState, arrival: Callable[[int, _RunState], Optional[float]],
              sizes: np.ndarray, policy: Policy, threads: list[threading.Thread],
              timeout_s: Optional[float]) -> None:
        """Worker processes: one loop admits each query when it is due and, between
        arrivals, waits on the workers' connections and hands out sub-requests as workers
        finish, until every query is done. (A second thread of this process would contend
        with it for the interpreter lock at every hand-over.)"""
        procs = self._procs
        assert procs is not None
        start = time.perf_counter()
        s.t0 = start
        i, n = 0, sizes.size
        at = arrival(0, s) if n else None
        if at is not None:
            s.check_arrival(0, at)
        deadline = None
        while s.error is None:
            now = time.perf_counter()
            while at is not None and start + at <= now:
                with s.cond:
                    self._admit(s, i, at, int(sizes[i]), policy)
                i += 1
                at = arrival(i, s) if i < n else None
                if at is not None:
                    s.check_arrival(i, at)
                if at is None and i < n:  # no more queries: the run is the ones dispatched
                    with s.cond:
                        s.end_arrivals(i)
            if at is not None:
                wait = start + at - now
                if not procs.exact_timeouts:
                    # Waits are whole milliseconds, rounded up: wait until about a
                    # millisecond before the arrival, then in short sleeps.
                    wait = wait - 1e-3 if wait > 2e-3 else 0.0
            else:
                if s.finished >= s.n:
                    return
                if deadline is None:
                    deadline = s.deadline(now)
                elif now > deadline:
                    raise s.timeout_error()
                if not all(t.is_alive() for t in threads):
                    s.error = RuntimeError("the accelerator's thread exited unexpectedly")
                    return
                wait = min(deadline - now, 0.05)
            try:
                events = procs.poll(wait)
                for event in events:
                    self._handle(s, *event)
            except BaseException as e:
                self._fail(s, e)
                return
            if not events and at is not None and not procs.exact_timeouts:
                time.sleep(min(max(start + at - time.perf_counter(), 0.0), 1e-4))

    def _wait(self, s: _RunState, threads: list[threading.Thread]) -> None:
        deadline = s.deadline(time.perf_counter())
        with s.done:
            while s.finished < s.n and s.error is None:
                if not all(t.is_alive() for t in threads):
                    s.error = RuntimeError("a worker thread exited unexpectedly")
                    break
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise s.timeout_error()
                s.done.wait(timeout=min(left, 0.5))

    def _complete(self, s: _RunState, i: int, end: Optional[float] = None) -> None:
        now = (time.perf_counter() if end is None else end) - s.t0
        with s.cond:
            s.end[i] = max(s.end[i], now)
            s.parts[i] -= 1
            if s.parts[i] == 0:
                s.finish(i)

    def _fail(self, s: _RunState, e: BaseException) -> None:
        with s.cond:
            if s.error is None:
                s.error, s.details = e, getattr(e, "details", "") or traceback.format_exc()
            s.cond.notify_all()
            s.done.notify_all()
            s.accel.notify_all()

    def _take(self, s: _RunState, cond: threading.Condition, queue: deque[Any]) -> Any:
        """The next item of ``queue`` (waiting on ``cond``) and the time it was taken, or None
        when the run stops."""
        with cond:
            while not queue and not s.stop and s.error is None:
                cond.wait()
            if s.stop or s.error is not None:
                return None
            return (*queue.popleft(), time.perf_counter())

    def _worker(self, s: _RunState, w: int) -> None:
        try:
            with torch.inference_mode():
                while (item := self._take(s, s.cond, s.queue)) is not None:
                    i, k, lo, n, taken = item
                    t0 = time.perf_counter()
                    self._forward(self.pool.rows(lo, lo + n))
                    t1 = time.perf_counter()
                    s.service.append(  # append: atomic
                        Service(i, k, n, t1 - t0, t1 - taken, w, taken - s.t0))
                    self._complete(s, i, t1)
        except BaseException as e:  # reported to the caller, never swallowed
            self._fail(s, e)

    def _feed(self, s: _RunState) -> None:
        """Hand queued sub-requests to idle worker processes (call holding ``s.cond``)."""
        assert self._procs is not None
        while s.idle and s.queue and not s.stop and s.error is None:
            k = s.idle.popleft()
            item = s.queue.popleft()
            try:
                s.sent[k] = time.perf_counter()
                self._procs.send(k, (self._run_id, *item))
            except OSError:
                # Gone: the sub-request goes back to the head of the queue, and the worker's
                # death comes as an event (its replacement reports ready in turn).
                s.queue.appendleft(item)
                self._procs.busy[k] = False
                continue
            s.holding[k] = item[0]

    def _handle(self, s: _RunState, tag: str, k: int, payload: tuple[Any, ...]) -> None:
        """One event of the worker processes (:meth:`WorkerProcesses.poll`)."""
        if tag == "done":
            run, i, part, n, seconds, end = payload
            if run == self._run_id:  # not a leftover of an abandoned run
                s.holding.pop(k, None)
                held = time.perf_counter() - s.sent[k]
                s.service.append(Service(i, part, n, seconds, held, k, s.sent[k] - s.t0))
                self._complete(s, i, end)
            with s.cond:
                s.idle.append(k)
                self._feed(s)
        elif tag == "ready":  # a replacement has built its model
            with s.cond:
                s.idle.append(k)
                self._feed(s)
        elif tag == "error":
            message, details = payload
            raise RemoteWorkerError(f"worker process {k}: {message}", details)
        else:
            self._lost(s, k, payload[0])

    def _lost(self, s: _RunState, k: int, exitcode: Optional[int]) -> None:
        """Worker process ``k`` died: the query of the sub-request it held fails (its other
        parts still run, so the query is accounted for once they are done), and a
        replacement starts; past ``s.deaths_allowed`` deaths the run gives up."""
        assert self._procs is not None
        s.deaths += 1
        with s.cond:
            if k in s.idle:  # it died between sub-requests
                s.idle.remove(k)
        i = s.holding.pop(k, None)
        if i is not None:
            s.failed[i] = True
            self._complete(s, i)
        if s.deaths > s.deaths_allowed:
            raise RuntimeError(f"worker processes died {s.deaths} times in this run (the last, "
                               f"process {k}, with exit code {exitcode}); giving up")
        self._procs.spawn(k)

    def _accelerator(self, s: _RunState) -> None:
        assert self.accelerator is not None
        try:
            while (item := self._take(s, s.accel, s.accel_queue)) is not None:
                i, lo, n, _ = item
                self.accelerator.run(self.pool.rows(lo, lo + n))
                self._complete(s, i)
        except BaseException as e:
            self._fail(s, e)


class RemoteWorkerError(RuntimeError):
    """An exception a worker process reported, with its traceback text."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


class _RunState:
    """One run's shared state, guarded by ``cond``."""

    def __init__(self, n: int, capacity: int, timeout_s: Optional[float] = None) -> None:
        self.n, self.capacity = n, capacity
        self.timeout_s = timeout_s  # from t0; None: the default after the last arrival
        lock = threading.Lock()
        self.cond = threading.Condition(lock)  # workers wait here for sub-requests
        self.done = threading.Condition(lock)  # the caller waits here for finished queries
        self.accel = threading.Condition(lock)  # the accelerator waits here for queries
        self.queue: deque[tuple[int, int, int, int]] = deque()  # query, part, first, items
        self.accel_queue: deque[tuple[int, int, int]] = deque()
        self.idle: deque[int] = deque()  # worker processes holding no sub-request
        self.sent: dict[int, float] = {}  # when each worker process was last handed one
        self.offset = 0  # where the next query's items start in the input pool
        self.arrival = np.zeros(n)  # seconds after the start (set as queries are dispatched)
        self.end = np.zeros(n)
        self.parts = np.zeros(n, dtype=np.int64)
        self.shed = np.zeros(n, dtype=bool)
        self.failed = np.zeros(n, dtype=bool)  # a worker process died holding a part of it
        self.holding: dict[int, int] = {}  # worker process -> the query of its sub-request
        self.deaths = 0
        self.deaths_allowed = 0
        self.finished = 0
        self.completed: list[int] = []  # queries in the order they finished (or were shed)
        self.offloaded = 0
        self.stop = False
        self.service: list[Service] = []  # CPU sub-requests, in completion order
        self.error: Optional[BaseException] = None
        self.details = ""
        self.t0 = 0.0

    def deadline(self, now: float) -> float:
        """When the run must be over (``perf_counter`` time), asked once every query has
        arrived (``now``): ``timeout_s`` after the start, or by default 30 s plus 10 ms a
        query after the last arrival."""
        if self.timeout_s is not None:
            return self.t0 + self.timeout_s
        return now + 30.0 + 10 * self.n * 1e-3

    def check_arrival(self, i: int, at: float) -> None:
        """Refuse an arrival at ``at`` s that ``timeout_s`` leaves no time for."""
        if self.timeout_s is not None and at >= self.timeout_s:
            raise TimeoutError(f"query {i} would arrive {at:g} s after the start, past the "
                               f"timeout of {self.timeout_s:g} s")

    def timeout_error(self) -> TimeoutError:
        after = (f"{self.timeout_s:g} s after the start" if self.timeout_s is not None
                 else "the default time after the last arrival")
        return TimeoutError(f"{self.n - self.finished} of {self.n} queries unfinished {after}")

    def end_arrivals(self, n: int) -> None:
        """No query arrives after the first ``n`` (call holding ``cond``)."""
        self.n = n
        if self.finished == n:
            self.done.notify_all()

    def finish(self, i: int) -> None:
        """Query ``i`` is done (served or shed); call holding ``cond``."""
        self.finished += 1
        self.completed.append(i)
        if self.finished == self.n:
            self.done.notify_all()


def _sizes(sizes: Any) -> np.ndarray:
    """Query sizes as int64, refusing floats that are not whole numbers and non-numbers."""
    arr = np.asarray(sizes)
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"query sizes must be whole numbers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _timeout(timeout_s: Optional[float]) -> Optional[float]:
    """A checked ``timeout_s``: None or a positive finite number of seconds."""
    if timeout_s is None:
        return None
    t = float(timeout_s)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return t
