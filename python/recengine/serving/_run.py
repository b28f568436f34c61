"""One run of the server: its shared state, the record of each sub-request, and the one
error a failed worker (thread or process) raises."""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["RunState", "Service", "WorkerError", "idle_before"]


class WorkerError(RuntimeError):
    """A worker raised while serving; the original exception is its ``__cause__`` and its
    traceback text is in ``details``."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class Service(NamedTuple):
    """One CPU sub-request of a run (or one query offloaded whole to the accelerator), as it
    finished."""

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


class RunState:
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
        self.accel_service: list[Service] = []  # offloaded queries, in completion order
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

    def complete(self, i: int, end: Optional[float] = None) -> None:
        """One part of query ``i`` finished at ``end`` (``perf_counter`` time; default: now)."""
        now = (time.perf_counter() if end is None else end) - self.t0
        with self.cond:
            self.end[i] = max(self.end[i], now)
            self.parts[i] -= 1
            if self.parts[i] == 0:
                self.finish(i)

    def fail(self, e: BaseException) -> None:
        """Stop the run on ``e`` (the first error wins), waking everyone who waits."""
        with self.cond:
            if self.error is None:
                self.error, self.details = e, getattr(e, "details", "") or traceback.format_exc()
            self.cond.notify_all()
            self.done.notify_all()
            self.accel.notify_all()

    def take(self, cond: threading.Condition, queue: deque[Any]) -> Any:
        """The next item of ``queue`` (waiting on ``cond``) and the time it was taken, or None
        when the run stops."""
        with cond:
            while not queue and not self.stop and self.error is None:
                cond.wait()
            if self.stop or self.error is not None:
                return None
            return (*queue.popleft(), time.perf_counter())
