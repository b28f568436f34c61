"""Worker processes for :class:`~recengine.serving.Server` (``processes=True``).

Each worker is a process with its own model replica, rebuilt from the arguments
:func:`recengine.models.build` was given, and its own copy of the input pool (drawn with the
same seed, so the same inputs). Its forwards therefore share no interpreter lock with the
other workers. The parent keeps the ready queue and hands one sub-request at a time to an
idle worker over that worker's connection, so the queue stays one FIFO in one place (the
same discipline as the threaded server and the simulator), and no lock is shared between
processes: a worker that dies cannot leave another waiting on it. A dead worker shows up as
the end of its connection, and the parent reports it.

Each worker is a fresh interpreter (``python -m recengine.serving._worker``) on one end of
a socket pair: nothing of this process is forked (torch's and the core's thread pools do not
survive a fork) and the caller's main module is never imported again, so a script needs no
``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Optional, Sequence

__all__ = ["Event", "WorkerProcesses"]

#: What :meth:`WorkerProcesses.poll` reports: ``("done", worker, (run, query, part, items,
#: seconds, end))`` with ``end`` a :func:`time.perf_counter` reading (on Linux one monotonic
#: clock for every process of the machine), ``("error", worker, (message, traceback))`` or
#: ``("died", worker, (exitcode, ""))``.
Event = tuple[str, int, tuple[Any, ...]]


class WorkerProcesses:
    """``workers`` processes serving a model made by :func:`recengine.models.build`.

    Args:
        build_args: the keyword arguments of :func:`~recengine.models.build` (``name``,
            ``scale``, ``seed``, ``weights`` and the model's options).
        workers: processes to start.
        threads: torch and recengine threads each process's forward uses.
        distribution, seed, pool_size: the input pool, as :meth:`RecModel.sample_batch`
            draws it (identical in every process and in the parent).
        startup_timeout_s: the longest wait for every process to be ready.

    Raises:
        RuntimeError: a process failed to build its model (the message says why) or was not
            ready in time.

    Example::

        >>> procs = WorkerProcesses({"name": "ncf", "scale": 0.01}, workers=1)
        >>> procs.send(0, (1, 0, 0, 0, 8))  # run 1, query 0, part 0: items 0-7
        >>> procs.poll(60.0)[0][:2]
        ('done', 0)
        >>> procs.close()
    """

    def __init__(self, build_args: dict[str, Any], workers: int, threads: int = 1,
                 distribution: str = "uniform", seed: int = 0, pool_size: int = 2048,
                 startup_timeout_s: float = 600.0) -> None:
        self._setup = (build_args, threads, distribution, seed, pool_size)
        self.timeout_s = startup_timeout_s
        self.procs: list[Optional[subprocess.Popen[bytes]]] = [None] * workers
        self.conns: list[Optional[Connection]] = [None] * workers
        #: Whether each worker holds a sub-request (possibly of an earlier, abandoned run).
        self.busy = [False] * workers
        self.start(range(workers))

    def __len__(self) -> int:
        return len(self.procs)

    def start(self, which: Sequence[int]) -> None:
        """(Re)start the workers ``which`` and wait until each has built its model."""
        for k in which:
            ours, theirs = socket.socketpair()
            with theirs:
                fd = theirs.fileno()
                self.procs[k] = subprocess.Popen(
                    [sys.executable, "-m", "recengine.serving._worker", str(fd)],
                    pass_fds=(fd,), stdin=subprocess.DEVNULL)
            self.conns[k], self.busy[k] = Connection(ours.detach()), False
            self.conns[k].send(self._setup)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.timeout_s
        for k in which:
            conn = self.conns[k]
            assert conn is not None
            if not wait([conn], max(deadline - time.monotonic(), 0.0)):
                self.close()
                raise RuntimeError(f"worker process {k} was not ready within "
                                   f"{self.timeout_s:.0f} s")
            try:
                tag, payload = conn.recv()
            except (EOFError, OSError):
                code = self._exitcode(k)
                self.close()
                raise RuntimeError(f"worker process {k} exited while starting (exit code "
                                   f"{code})") from None
            if tag != "ready":
                self.close()
                raise RuntimeError(f"worker process {k} failed to start: {payload[0]}\n"
                                   f"{payload[1]}")

    def restart_dead(self) -> list[int]:
        """Restart every worker whose process has exited; returns their indices."""
        dead = [k for k, p in enumerate(self.procs) if p is None or p.poll() is not None]
        for k in dead:
            self._drop(k)
        if dead:
            self.start(dead)
        return dead

    def stop_busy(self) -> list[int]:
        """Kill the workers holding a sub-request (after a run was abandoned: they may hang,
        and their answers are of no use); :meth:`restart_dead` replaces them."""
        busy = [k for k, b in enumerate(self.busy) if b]
        for k in busy:
            self._drop(k)
        return busy

    def send(self, k: int, item: tuple[int, int, int, int, int]) -> None:
        """Hand worker ``k`` the sub-request ``(run, query, part, first, items)``."""
        conn = self.conns[k]
        if conn is None:
            raise BrokenPipeError(f"worker process {k} is gone")
        assert not self.busy[k], "a worker holds one sub-request at a time"
        self.busy[k] = True
        conn.send(item)

    def poll(self, timeout_s: float) -> list[Event]:
        """What happened within ``timeout_s``: finished sub-requests, errors, deaths (its
        connection's end). A worker that reports is no longer busy."""
        live = {c: k for k, c in enumerate(self.conns) if c is not None}
        events: list[Event] = []
        for conn in wait(list(live), timeout_s):
            k = live[conn]  # type: ignore[index]
            try:
                tag, payload = conn.recv()  # type: ignore[union-attr]
            except (EOFError, OSError):
                events.append(("died", k, (self._exitcode(k), "")))
                self._drop(k)
                continue
            self.busy[k] = False
            events.append((tag, k, payload))
        return events

    def _exitcode(self, k: int) -> Optional[int]:
        p = self.procs[k]
        if p is None:
            return None
        try:
            return p.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def _drop(self, k: int) -> None:
        conn, p = self.conns[k], self.procs[k]
        if conn is not None:
            conn.close()
        if p is not None and p.poll() is None:
            p.kill()  # its connection is closed: it can do no more useful work
            p.wait()
        self.conns[k], self.procs[k], self.busy[k] = None, None, False

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop every worker (asked first, then killed)."""
        for conn in self.conns:
            if conn is not None:
                try:
                    conn.send(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            if p is not None:
                try:
                    p.wait(timeout=max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    pass
        for k in range(len(self.procs)):
            self._drop(k)

    def __del__(self) -> None:
        if any(p is not None for p in getattr(self, "procs", ())):
            self.close(timeout_s=1.0)
