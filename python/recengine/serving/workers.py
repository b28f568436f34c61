"""The server's two kinds of workers, behind one dispatcher (:class:`~.server.Server`).

Both take sub-requests from the run's ready queue and report each one's end to the run
(:class:`~._run.RunState`); they differ in how the dispatcher waits between arrivals:

* :class:`ThreadWorkers`: threads of this process run the forwards on the shared model; the
  dispatcher sleeps until the next arrival and notifies a thread per queued sub-request.
* :class:`ProcessWorkers`: one process per worker (:class:`~.processes.WorkerProcesses`); the
  dispatcher hands each sub-request to an idle process and, between arrivals, waits on the
  processes' connections for results, deaths and replacements (a second thread of this
  process would contend with it for the interpreter lock at every hand-over).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

import torch

from ._run import RunState, Service, WorkerError
from .processes import WorkerProcesses

__all__ = ["MIN_DEATHS_PER_RUN", "ProcessWorkers", "ThreadWorkers"]

#: Worker process deaths a run survives (each failing the query it held and replaced), at
#: least this many and four times the workers; past that it raises WorkerError.
MIN_DEATHS_PER_RUN = 8


class ThreadWorkers:
    """``count`` worker threads running ``forward`` on slices of ``pool``."""

    #: What a dead thread of the run means.
    lost_thread = "a worker thread exited unexpectedly"

    def __init__(self, count: int, forward: Callable[[Any], object], pool: Any) -> None:
        self.count, self.forward, self.pool = count, forward, pool

    def begin(self, s: RunState) -> list[threading.Thread]:
        """The run's worker threads (not started)."""
        return [threading.Thread(target=self._work, args=(s, w), daemon=True,
                                 name=f"recengine-worker-{w}") for w in range(self.count)]

    def queued(self, s: RunState, parts: int) -> None:
        """``parts`` sub-requests joined the queue (call holding ``s.cond``)."""
        s.cond.notify(parts)

    def wait(self, s: RunState, until: float, arrivals_left: bool) -> None:
        """Let the workers work until ``until`` (``perf_counter`` time) or, once every query
        has arrived, until they finish one."""
        left = until - time.perf_counter()
        if arrivals_left:
            time.sleep(min(max(left, 0.0), 0.05))
            return
        with s.done:
            if s.finished < s.n and s.error is None and left > 0:
                s.done.wait(timeout=min(left, 0.5))

    def end(self, s: RunState, n: int) -> None:
        """After the run (a threaded server holds nothing to stop)."""

    def _work(self, s: RunState, w: int) -> None:
        try:
            with torch.inference_mode():
                while (item := s.take(s.cond, s.queue)) is not None:
                    i, k, lo, n, taken = item
                    t0 = time.perf_counter()
                    self.forward(self.pool.rows(lo, lo + n))
                    t1 = time.perf_counter()
                    s.service.append(  # append: atomic
                        Service(i, k, n, t1 - t0, t1 - taken, w, taken - s.t0))
                    s.complete(i, t1)
        except BaseException as e:  # reported to the caller, never swallowed
            s.fail(e)


class ProcessWorkers:
    """Worker processes (:class:`WorkerProcesses`), each on its own replica of the model."""

    lost_thread = "the accelerator's thread exited unexpectedly"

    def __init__(self, procs: WorkerProcesses) -> None:
        self.procs = procs
        self._run_id = 0

    def begin(self, s: RunState) -> list[threading.Thread]:
        """Ready the processes for a run: replace any lost in an earlier run, count the idle
        ones; no thread of this process serves."""
        self._run_id += 1
        self.procs.restart_dead()  # a worker lost in an earlier run, or still starting
        s.idle.extend(k for k in range(len(self.procs)) if not self.procs.busy[k])
        s.deaths_allowed = max(MIN_DEATHS_PER_RUN, 4 * len(self.procs))
        return []

    def queued(self, s: RunState, parts: int) -> None:
        self._feed(s)

    def wait(self, s: RunState, until: float, arrivals_left: bool) -> None:
        """Wait on the processes' connections until ``until`` (at most 50 ms once every query
        has arrived), handling what they report."""
        wait = until - time.perf_counter()
        exact = self.procs.exact_timeouts
        if not arrivals_left:
            wait = min(wait, 0.05)
        elif not exact:
            # Waits are whole milliseconds, rounded up: wait until about a millisecond
            # before the arrival, then in short sleeps.
            wait = wait - 1e-3 if wait > 2e-3 else 0.0
        try:
            events = self.procs.poll(max(wait, 0.0))
            for event in events:
                self._handle(s, *event)
        except BaseException as e:
            s.fail(e)
            return
        if not events and arrivals_left and not exact:
            time.sleep(min(max(until - time.perf_counter(), 0.0), 1e-4))

    def end(self, s: RunState, n: int) -> None:
        """After the run: processes still holding a sub-request are hung or abandoned, and are
        replaced at the next run."""
        if s.finished < n:
            self.procs.stop_busy()

    def _feed(self, s: RunState) -> None:
        """Hand queued sub-requests to idle worker processes (call holding ``s.cond``)."""
        while s.idle and s.queue and not s.stop and s.error is None:
            k = s.idle.popleft()
            item = s.queue.popleft()
            try:
                s.sent[k] = time.perf_counter()
                self.procs.send(k, (self._run_id, *item))
            except OSError:
                # Gone: the sub-request goes back to the head of the queue, and the worker's
                # death comes as an event (its replacement reports ready in turn).
                s.queue.appendleft(item)
                self.procs.busy[k] = False
                continue
            s.holding[k] = item[0]

    def _handle(self, s: RunState, tag: str, k: int, payload: tuple[Any, ...]) -> None:
        """One event of the worker processes (:meth:`WorkerProcesses.poll`)."""
        if tag == "done":
            run, i, part, n, seconds, end = payload
            if run == self._run_id:  # not a leftover of an abandoned run
                s.holding.pop(k, None)
                held = time.perf_counter() - s.sent[k]
                s.service.append(Service(i, part, n, seconds, held, k, s.sent[k] - s.t0))
                s.complete(i, end)
            with s.cond:
                s.idle.append(k)
                self._feed(s)
        elif tag == "ready":  # a replacement has built its model
            with s.cond:
                s.idle.append(k)
                self._feed(s)
        elif tag == "error":
            message, details = payload
            raise WorkerError(f"worker process {k}: {message}", details)
        else:
            self._lost(s, k, payload[0])

    def _lost(self, s: RunState, k: int, exitcode: Optional[int]) -> None:
        """Worker process ``k`` died: the query of the sub-request it held fails (its other
        parts still run, so the query is accounted for once they are done), and a
        replacement starts; past ``s.deaths_allowed`` deaths the run gives up."""
        s.deaths += 1
        with s.cond:
            if k in s.idle:  # it died between sub-requests
                s.idle.remove(k)
        i = s.holding.pop(k, None)
        if i is not None:
            s.failed[i] = True
            s.complete(i)
        if s.deaths > s.deaths_allowed:
            raise RuntimeError(f"worker processes died {s.deaths} times in this run (the last, "
                               f"process {k}, with exit code {exitcode}); giving up")
        self.procs.spawn(k)
