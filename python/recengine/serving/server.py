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
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .. import get_num_threads, set_num_threads
from ..models import Batch, RecModel
from ..sched.controller import RateController
from ..sched.latency import PROFILE_BATCHES, CurvesByLoad, LatencyCurve, check_loads
from ..sched.result import Policy, RunResult
from . import allocator
from ._run import RunState, Service, WorkerError, idle_before
from .accelerator import Accelerator
from .processes import WorkerProcesses
from .workers import MIN_DEATHS_PER_RUN, ProcessWorkers, ThreadWorkers

__all__ = ["MIN_DEATHS_PER_RUN", "SWITCH_INTERVAL_S", "Server", "Service", "WorkerError",
           "idle_before"]

#: The interpreter's thread switch interval while a server runs (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005
#: The most queries one profiling run serves.
PROFILE_MAX_QUERIES = 20_000
#: How long the end of a run waits for its worker threads, all together.
JOIN_GRACE_S = 2.0


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
        in_process = accelerator is not None and accelerator.process
        if (processes or in_process) and build_args is None:
            raise ValueError("process workers (and an accelerator process) rebuild the model, "
                             "so it must come from recengine.models.build")
        self.model = model.eval()
        self.threads_per_worker = threads_per_worker
        self.queue_capacity = queue_capacity
        self.accelerator = accelerator
        self.pool: Batch = model.sample_batch(pool_size, distribution=distribution, seed=seed)
        self._forward: Callable[[Batch], object] = self.model
        #: The last run's CPU sub-requests, as they finished.
        self.last_service: list[Service] = []
        #: The last run's queries offloaded to the accelerator, as they finished (``part``
        #: 0, ``worker`` -1; ``seconds``: the forward, ``held``: the accelerator's time with
        #: the query, handing it over and back included).
        self.last_accelerator_service: list[Service] = []
        #: The sub-requests of the last :meth:`profile`'s final run at each batch size.
        self.profile_services: dict[int, list[Service]] = {}
        self._procs: Optional[WorkerProcesses] = None
        self._process_workers: Optional[ProcessWorkers] = None
        self._process_mode = processes
        self._acc_procs: Optional[WorkerProcesses] = None
        if in_process:
            assert build_args is not None and accelerator is not None
            self._acc_procs = WorkerProcesses(build_args, 1, 1, distribution, seed, pool_size,
                                              steady_malloc, device=str(accelerator.device))
        if processes:
            assert build_args is not None
            self._procs = WorkerProcesses(build_args, self.workers, threads_per_worker,
                                          distribution, seed, pool_size, steady_malloc)
            self._process_workers = ProcessWorkers(self._procs)
        elif steady_malloc:
            allocator.steady_malloc()

    @property
    def worker_pids(self) -> list[Optional[int]]:
        """The worker processes' ids (None for threads, or for a process being replaced)."""
        if self._procs is None:
            return [None] * self.workers
        return self._procs.pids

    @property
    def accelerator_pid(self) -> Optional[int]:
        """The accelerator process's id (None without one, or while it is replaced)."""
        return None if self._acc_procs is None else self._acc_procs.pids[0]

    @property
    def processes(self) -> bool:
        """Whether the workers are processes (else threads of this process)."""
        return self._process_mode

    def close(self) -> None:
        """Stop the worker processes, if any (a threaded server holds nothing to stop)."""
        if self._procs is not None:
            self._procs.close()
            self._procs = self._process_workers = None
        if self._acc_procs is not None:
            self._acc_procs.close()
            self._acc_procs = None

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

        def arrival(i: int, s: RunState) -> Optional[float]:
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
               arrival: Callable[[int, RunState], Optional[float]],
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
        state = RunState(n, self.queue_capacity, timeout_s)
        workers: Union[ThreadWorkers, ProcessWorkers] = (
            self._process_workers if self._process_workers is not None
            else ThreadWorkers(self.workers, self._forward, self.pool))
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
        threads = workers.begin(state)
        if self._acc_procs is not None:
            self._acc_procs.restart_dead()  # lost in an earlier run
            state.deaths_allowed = max(state.deaths_allowed, MIN_DEATHS_PER_RUN)
        if self.accelerator is not None:
            threads.append(threading.Thread(target=self._accelerator, args=(state,),
                                            daemon=True, name="recengine-accelerator"))
        for t in threads:
            t.start()
        try:
            self._dispatch(state, workers, arrival, sizes, policy, threads)
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
            workers.end(state, n)
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
        self.last_accelerator_service = state.accel_service
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
                if span_s > 0:
                    # A guess far below the capacity (a slow stretch while the forwards
                    # were timed) would make the run of ``least`` queries last many spans;
                    # a rate too high shows in the held times and is run again below.
                    rate = max(rate, least / (4 * span_s))
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
        """Seconds one forward of ``b`` items takes in this process, alone (at least 10 us):
        the median of ``repeat`` forwards after an untimed one (a batch size's first forward
        allocates, and a guess from it would pace a profile far below the load it asks
        for)."""
        times = []
        with torch.inference_mode():
            for k in range(repeat + 1):
                lo = k * b % (len(self.pool) - b + 1)
                t0 = time.perf_counter()
                self._forward(self.pool.rows(lo, lo + b))
                times.append(time.perf_counter() - t0)
        return max(float(np.median(times[1:])), 1e-5)

    def _dispatch(self, s: RunState, workers: Union[ThreadWorkers, ProcessWorkers],
                  arrival: Callable[[int, RunState], Optional[float]], sizes: np.ndarray,
                  policy: Policy, threads: list[threading.Thread]) -> None:
        """Admit each query when it is due and, between arrivals, let ``workers`` work; once
        every query has arrived, wait for them all to finish (by the run's deadline)."""
        start = time.perf_counter()
        s.t0 = start
        n = sizes.size
        i, at = 0, self._arrival(s, arrival, 0, n)
        deadline = None
        while s.error is None:
            now = time.perf_counter()
            while at is not None and start + at <= now:
                with s.cond:
                    self._admit(s, workers, i, at, int(sizes[i]), policy)
                i += 1
                at = self._arrival(s, arrival, i, n)
            if at is not None:
                workers.wait(s, start + at, arrivals_left=True)
                continue
            if s.finished >= s.n:
                return
            if deadline is None:
                deadline = s.deadline(now)
            elif now > deadline:
                raise s.timeout_error()
            if not all(t.is_alive() for t in threads):
                s.error = RuntimeError(workers.lost_thread)
                return
            workers.wait(s, deadline, arrivals_left=False)

    @staticmethod
    def _arrival(s: RunState, arrival: Callable[[int, RunState], Optional[float]], i: int,
                 n: int) -> Optional[float]:
        """When query ``i`` arrives (s after the start), or None: no more queries (the run is
        the ones dispatched)."""
        at = arrival(i, s) if i < n else None
        if at is None:
            if i < n:
                with s.cond:
                    s.end_arrivals(i)
            return None
        s.check_arrival(i, at)
        return at

    def _admit(self, s: RunState, workers: Union[ThreadWorkers, ProcessWorkers], i: int,
               at: float, n: int, policy: Policy) -> None:
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
        workers.queued(s, parts)

    def _accelerator(self, s: RunState) -> None:
        assert self.accelerator is not None
        try:
            while (item := s.take(s.accel, s.accel_queue)) is not None:
                i, lo, n, _ = item
                t0 = time.perf_counter()
                if self._acc_procs is not None:
                    seconds = self._run_in_process(self._acc_procs, s, i, lo, n)
                    if seconds is None:
                        return  # the run ended while the process was busy
                else:
                    self.accelerator.run(self.pool.rows(lo, lo + n))
                    seconds = time.perf_counter() - t0
                if not s.failed[i]:
                    s.accel_service.append(Service(i, 0, n, seconds, time.perf_counter() - t0,
                                                   -1, t0 - s.t0))
                s.complete(i)
        except BaseException as e:
            s.fail(e)

    @staticmethod
    def _run_in_process(procs: WorkerProcesses, s: RunState, i: int, lo: int,
                        n: int) -> Optional[float]:
        """Hand query ``i`` (pool rows ``lo`` to ``lo + n``) to the accelerator process and
        wait for it: the seconds its forward took (NaN where the process died: the query
        fails, ``s.failed``, and the process is replaced, as a CPU worker process is, up to
        the run's allowed deaths), or None when the run stops first (the busy process is
        then stopped, and the next run starts another).

        Raises:
            WorkerError: the process raised.
            RuntimeError: it died more often than the run allows.
        """
        try:
            procs.send(0, (0, i, 0, lo, n))
        except (BrokenPipeError, ConnectionResetError):  # it died between queries
            procs.restart_dead()
            procs.send(0, (0, i, 0, lo, n))
        while True:
            for tag, _, payload in procs.poll(0.05):
                if tag == "done":
                    return float(payload[4])
                if tag == "error":
                    raise WorkerError(f"the accelerator process raised: {payload[0]}",
                                      payload[1])
                with s.cond:
                    s.deaths += 1
                if s.deaths > s.deaths_allowed:
                    raise RuntimeError(f"worker processes died {s.deaths} times in this run "
                                       f"(the last, the accelerator's, with exit code "
                                       f"{payload[0]}); giving up")
                s.failed[i] = True
                procs.start([0])
                return float("nan")
            if s.stop:
                procs.stop_busy()
                return None


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
