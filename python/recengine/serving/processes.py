"""Worker processes for :class:`~recengine.serving.Server` (``processes=True``).

Each worker is a process with its own model replica, rebuilt from the arguments
:func:`recengine.models.build` was given, and its own copy of the input pool (drawn with the
same seed, so the same inputs). Its forwards therefore share no interpreter lock with the
other workers. The parent keeps the ready queue and hands one sub-request at a time to an
idle worker over that worker's connection, so the queue stays one FIFO in one place (the
same discipline as the threaded server and the simulator), and no lock is shared between
processes: a worker that dies cannot leave another waiting on it. A dead worker shows up as
the end of its connection, and the parent reports it; a replacement can be started without
waiting for it (:meth:`WorkerProcesses.spawn`), and reports itself ready through
:meth:`~WorkerProcesses.poll` when it has built its model.

A sub-request and its answer cross the connection as a few packed numbers
(:data:`SUB_REQUEST`, :data:`DONE`), not pickles, and the parent waits on every connection
through one selector set up when the workers start: at thousands of sub-requests a second
the parent's own time per sub-request bounds the server's throughput. The selector is
``select(2)``'s, whose timeout is exact to the microsecond, so the parent can wait for
results right up to its next arrival; where a connection's descriptor is too large for it,
the parent falls back to the platform's default, which waits in whole milliseconds.

Each worker is a fresh interpreter (``python -m recengine.serving._worker``) on one end of
a socket pair: nothing of this process is forked (torch's and the core's thread pools do not
survive a fork) and the caller's main module is never imported again, so a script needs no
``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import pickle
import selectors
import socket
import struct
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Optional, Sequence

__all__ = ["DONE", "SUB_REQUEST", "Event", "WorkerProcesses"]

#: A sub-request, parent to worker: run, query, part, first item, items.
SUB_REQUEST = struct.Struct("<5q")
#: A finished sub-request, worker to parent, after the tag ``b"D"``: run, query, part, items,
#: the forward's seconds and its end (a :func:`time.perf_counter` reading).
DONE = struct.Struct("<4q2d")
#: The tags of a worker's messages: a finished sub-request, an error (a pickled
#: ``(message, traceback)`` follows), ready to serve. An empty message from the parent asks a
#: worker to stop.
TAG_DONE, TAG_ERROR, TAG_READY = b"D", b"E", b"R"
#: ``select(2)`` takes descriptors below this (``FD_SETSIZE``).
SELECT_LIMIT = 1024

#: What :meth:`WorkerProcesses.poll` reports: ``("done", worker, (run, query, part, items,
#: seconds, end))`` with ``end`` a :func:`time.perf_counter` reading (on Linux one monotonic
#: clock for every process of the machine), ``("error", worker, (message, traceback))``,
#: ``("died", worker, (exitcode, ""))`` or, for a worker started by :meth:`spawn`,
#: ``("ready", worker, ())``.
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
        steady_malloc: fix each process's malloc thresholds before it builds the model
            (:func:`~recengine.serving.allocator.steady_malloc`).
        startup_timeout_s: the longest wait for every process to be ready.
        device: where each process runs its forwards (``"cuda"``: the model on the device,
            each batch copied over and the device synchronised before it answers).

    Raises:
        RuntimeError: a process failed to build its model (the message says why) or was not
            ready in time.

    Example::

        >>> procs = WorkerProcesses({"name": "ncf", "scale": 0.01}, workers=1)
        >>> procs.send(0, (1, 0, 0, 0, 8))  # run 1, query 0, part 0: items 0-7
        >>> procs.poll(60.0)[0][:2]
        ('done', 0)
        >>> procs.poll(0.0)  # nothing more
        []
        >>> procs.close()
    """

    def __init__(self, build_args: dict[str, Any], workers: int, threads: int = 1,
                 distribution: str = "uniform", seed: int = 0, pool_size: int = 2048,
                 steady_malloc: bool = True, startup_timeout_s: float = 600.0,
                 device: str = "cpu") -> None:
        self._setup = (build_args, threads, distribution, seed, pool_size, steady_malloc,
                       device)
        self.timeout_s = startup_timeout_s
        self.procs: list[Optional[subprocess.Popen[bytes]]] = [None] * workers
        self.conns: list[Optional[Connection]] = [None] * workers
        #: Whether each worker holds a sub-request (possibly of an earlier, abandoned run).
        self.busy = [False] * workers
        #: Whether each worker was started and has not yet reported ready.
        self.starting = [False] * workers
        # One selector for the workers' connections, kept as they come and go.
        self._selector: selectors.BaseSelector = selectors.SelectSelector()
        self.start(range(workers))

    def __len__(self) -> int:
        return len(self.procs)

    def spawn(self, k: int) -> None:
        """Start worker ``k`` without waiting for it: :meth:`poll` reports ``("ready", k,
        ())`` once it has built its model (or its error, or its death)."""
        ours, theirs = socket.socketpair()
        with theirs:
            fd = theirs.fileno()
            self.procs[k] = subprocess.Popen(
                [sys.executable, "-m", "recengine.serving._worker", str(fd)],
                pass_fds=(fd,), stdin=subprocess.DEVNULL)
        conn = Connection(ours.detach())
        self.conns[k], self.busy[k], self.starting[k] = conn, False, True
        conn.send(self._setup)
        if conn.fileno() >= SELECT_LIMIT and isinstance(self._selector, selectors.SelectSelector):
            self._coarsen()
        self._selector.register(conn, selectors.EVENT_READ, k)

    def start(self, which: Sequence[int]) -> None:
        """(Re)start the workers ``which`` and wait until each has built its model."""
        for k in which:
            self.spawn(k)
        self.wait_started(which)

    def wait_started(self, which: Optional[Sequence[int]] = None) -> None:
        """Wait until the workers ``which`` (default: every one still starting) are ready.

        Raises:
            RuntimeError: one failed to start (its error, or its exit) or was not ready
                within the startup timeout; every worker is stopped then.
        """
        which = [k for k in (range(len(self.procs)) if which is None else which)
                 if self.starting[k]]
        deadline = time.monotonic() + self.timeout_s
        for k in which:
            conn = self.conns[k]
            assert conn is not None
            if not wait([conn], max(deadline - time.monotonic(), 0.0)):
                self.close()
                raise RuntimeError(f"worker process {k} was not ready within "
                                   f"{self.timeout_s:.0f} s")
            try:
                tag, payload = _decode(conn.recv_bytes())
            except (EOFError, OSError):
                code = self._exitcode(k)
                self.close()
                raise RuntimeError(f"worker process {k} exited while starting (exit code "
                                   f"{code})") from None
            if tag != "ready":
                self.close()
                raise RuntimeError(f"worker process {k} failed to start: {payload[0]}\n"
                                   f"{payload[1]}")
            self.starting[k] = False

    @property
    def exact_timeouts(self) -> bool:
        """Whether :meth:`poll` waits to the microsecond (else in whole milliseconds)."""
        return isinstance(self._selector, selectors.SelectSelector)

    def _coarsen(self) -> None:
        """Move the connections to the platform's default selector (no descriptor limit)."""
        old, self._selector = self._selector, selectors.DefaultSelector()
        for key in old.get_map().values():
            self._selector.register(key.fileobj, selectors.EVENT_READ, key.data)
        old.close()

    def restart_dead(self) -> list[int]:
        """Restart every worker whose process has exited, and wait for those still starting;
        returns the indices restarted."""
        dead = [k for k, p in enumerate(self.procs) if p is None or p.poll() is not None]
        for k in dead:
            self._drop(k)
        for k in dead:
            self.spawn(k)
        self.wait_started()
        return dead

    @property
    def pids(self) -> list[Optional[int]]:
        """Each worker's process id (None for one that is gone and not yet replaced)."""
        return [None if p is None else p.pid for p in self.procs]

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
        conn.send_bytes(SUB_REQUEST.pack(*item))

    def poll(self, timeout_s: float) -> list[Event]:
        """What happened within ``timeout_s`` (returning as soon as anything has): finished
        sub-requests, errors, deaths (its connection's end). A worker that reports is no
        longer busy. The wait is exact where :attr:`exact_timeouts`, else rounded up to a
        whole millisecond."""
        events: list[Event] = []
        for key, _ in self._selector.select(max(timeout_s, 0.0)):
            conn, k = key.fileobj, key.data
            try:
                data = conn.recv_bytes()  # type: ignore[union-attr]
            except (EOFError, OSError):
                events.append(("died", k, (self._exitcode(k), "")))
                self._drop(k)
                continue
            tag, payload = _decode(data)
            if self.starting[k]:
                self.starting[k] = False
                events.append(("ready", k, ()) if tag == "ready" else (tag, k, payload))
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
            try:
                self._selector.unregister(conn)
            except KeyError:
                pass  # it failed before it was ready
            conn.close()
        if p is not None and p.poll() is None:
            p.kill()  # its connection is closed: it can do no more useful work
            p.wait()
        self.conns[k], self.procs[k], self.busy[k], self.starting[k] = None, None, False, False

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop every worker (asked first, then killed)."""
        for conn in self.conns:
            if conn is not None:
                try:
                    conn.send_bytes(b"")
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


def _decode(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """A worker's message as ``(tag, payload)``: ``("done", DONE's fields)``, ``("error",
    (message, traceback))`` or ``("ready", ())``."""
    tag = data[:1]
    if tag == TAG_DONE:
        return "done", DONE.unpack_from(data, 1)
    if tag == TAG_READY:
        return "ready", ()
    if tag == TAG_ERROR:
        return "error", pickle.loads(data[1:])
    return "error", (f"unknown message {data[:16]!r}", "")
