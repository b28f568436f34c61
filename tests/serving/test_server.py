"""The real server: every query accounted for under overload, failing workers reported (no
hang), accelerator paths, agreement with the simulator, and the ``serve`` command."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import recengine.models as rm  # noqa: E402
from recengine.cli import main  # noqa: E402
from recengine.sched import LatencyCurve, Policy, SimulatedServer, simulate  # noqa: E402
from recengine.serving import Accelerator, Server, Service, WorkerError, idle_before  # noqa: E402
from recengine.workload import Workload  # noqa: E402

SMALL = rm.build("ncf", scale=0.01)
FLAT_CURVE = LatencyCurve((1, 1024), (1.0, 1.0))  # unused where service times are replayed


def test_under_overload_every_query_is_served_or_shed() -> None:
    server = Server(SMALL, workers=1, queue_capacity=8)
    n = 300
    arrivals = np.zeros(n)  # all at once: far beyond what one worker drains
    sizes = np.full(n, 64)
    r = server.run(arrivals, sizes, Policy(16))
    served = np.isfinite(r.latency_ms)
    assert r.shed > 0 and r.shed == (~served).sum()
    assert served.sum() + r.shed == n and np.all(r.latency_ms[served] > 0)
    assert r.p95 == float("inf")  # shed queries count as missing any target


@pytest.mark.parametrize("arrivals, match", [
    ([0.0, np.inf], "finite"), ([0.0, np.nan], "finite"), ([-1.0, 0.0], "non-negative"),
    ([0.5, 0.1], "non-decreasing"), ([0.0, 1e9], "past timeout_s=5")])
def test_bad_arrivals_are_refused_before_the_run(arrivals: list[float], match: str) -> None:
    server = Server(SMALL, workers=1)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        server.run(np.array(arrivals), np.full(2, 8), Policy(8), timeout_s=5)
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize("kwargs, match", [
    ({"timeout_s": 0}, "timeout_s"), ({"timeout_s": float("nan")}, "timeout_s"),
    ({"timeout_s": -3}, "timeout_s"), ({"warmup": 1.5}, "warmup"),
    ({"sizes": np.array([1.5, 2.0])}, "whole numbers")])
def test_bad_run_arguments_are_refused(kwargs: dict, match: str) -> None:
    server = Server(SMALL, workers=1)
    sizes = kwargs.pop("sizes", np.full(2, 8))
    with pytest.raises(ValueError, match=match):
        server.run(np.zeros(2), sizes, Policy(8), **kwargs)


def test_the_timeout_holds_when_every_worker_hangs() -> None:
    release = __import__("threading").Event()

    class Hung(torch.nn.Module):
        def forward(self, batch):
            release.wait(60)

    server = Server(SMALL, workers=4)
    server._forward = Hung()
    t0 = time.perf_counter()
    try:
        with pytest.warns(RuntimeWarning, match="still busy"):
            with pytest.raises(TimeoutError, match="unfinished 2 s after the start"):
                server.run(np.zeros(8), np.full(8, 8), Policy(8), timeout_s=2)
        # The timeout, then one grace period for the four threads together (not 5 s each).
        assert time.perf_counter() - t0 < 2 + 2 * 1.5
    finally:
        release.set()


def test_a_failing_worker_is_reported_not_hung() -> None:
    class Broken(torch.nn.Module):
        def forward(self, batch):
            raise RuntimeError("boom")

    server = Server(SMALL, workers=2)
    server._forward = Broken()
    with pytest.raises(WorkerError, match="boom") as info:
        server.run(np.linspace(0, 0.05, 20), np.full(20, 32), Policy(8), timeout_s=10)
    assert isinstance(info.value.__cause__, RuntimeError) and "boom" in info.value.details


def test_a_real_run_lasts_its_span_at_any_rate() -> None:
    """A run cut short at a high rate (it once stopped at 5,000 queries) can end before an
    overloaded server's queue shows in its p95; real and simulated runs take the same
    draws."""
    from recengine.serving import RealServer

    real = RealServer(Server(SMALL, workers=1), queries=300, span_s=1.0, curve=FLAT_CURVE)
    sim = SimulatedServer(FLAT_CURVE, 1, queries=300, span_s=1.0)
    for rate in (100.0, 20_000.0, 60_000.0):
        arrivals, sizes = real.draw(rate)
        assert len(arrivals) == max(300, int(rate))
        assert np.array_equal(sizes, sim.draw(rate)[1])


def test_queries_split_and_offload_as_the_policy_says() -> None:
    acc = Accelerator.modeled(LatencyCurve((1, 1024), (3.0, 3.0)))
    server = Server(SMALL, workers=2, accelerator=acc)
    r = server.run(np.array([0.0, 0.01, 0.02]), np.array([10, 300, 50]), Policy(16, 200))
    assert r.offloaded == 1 and r.shed == 0
    assert r.latency_ms[1] >= 3.0  # the modeled device's time at least
    (a,) = server.last_accelerator_service  # the offloaded query, timed
    assert (a.query, a.items, a.worker) == (1, 300, -1) and a.held >= a.seconds >= 3e-3
    assert {x.query for x in server.last_service} == {0, 2}
    with pytest.raises(ValueError, match="no accelerator"):
        Server(SMALL, workers=1).run(np.zeros(1), np.ones(1, dtype=int), Policy(8, 4))
    with pytest.raises(ValueError, match="non-decreasing"):
        server.run(np.array([1.0, 0.5]), np.array([1, 1]), Policy(8))


def test_an_accelerator_process_serves_offloaded_queries_and_its_death_loses_one() -> None:
    import signal
    import threading

    acc = Accelerator.process_on("cpu")
    assert acc.process and acc.describe() == "cpu (own process)"
    with pytest.raises(RuntimeError, match="inside a Server"):
        acc.run(SMALL.example_input(2))
    b = SMALL.example_input(2)
    for other in (acc, Accelerator.modeled(FLAT_CURVE)):
        with pytest.raises(RuntimeError, match="dense part alone"):
            other.run_dense(SMALL.embed(b), b.dense)
    with Server(SMALL, workers=1, accelerator=acc) as server:
        pid = server.accelerator_pid
        assert pid is not None and pid != os.getpid()
        r = server.run(np.array([0.0, 0.01, 0.02]), np.array([10, 300, 50]), Policy(16, 200))
        assert r.offloaded == 1 and r.shed == 0 and np.isfinite(r.latency_ms).all()
        (a,) = server.last_accelerator_service  # its forward, timed in the process
        assert a.query == 1 and a.items == 300 and a.held >= a.seconds > 0
        # Killed while it serves a stream of offloaded queries: the query it held fails,
        # every other is served, and a fresh process takes over.
        n = 60
        timer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
        timer.start()
        r = server.run(np.linspace(0.0, 0.6, n), np.full(n, 512), Policy(64, 256), warmup=0)
        timer.join()
        assert r.failed == 1 and r.shed == 0
        assert np.isfinite(r.latency_ms).sum() == n - 1
        served = [a.query for a in server.last_accelerator_service]  # not the failed one
        assert len(set(served)) == n - 1 and np.isfinite(r.latency_ms[served]).all()
        assert server.accelerator_pid not in (None, pid)
    assert server.accelerator_pid is None  # closed with the server
    with pytest.raises(ValueError, match="rebuild the model"):
        Server(rm.NCF(SMALL.tables), workers=1, accelerator=acc)
    with pytest.raises(ValueError, match="needs a device"):
        Accelerator(process=True)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            Accelerator.process_on("cuda")


def _check_worker_timelines(services: list[Service], workers: int) -> None:
    """Each sub-request names its worker, and one worker's sub-requests do not overlap."""
    assert {r.worker for r in services} <= set(range(workers))
    gaps = idle_before(services)
    assert np.all(gaps >= -1e-6)
    assert np.isinf(gaps).sum() == len({r.worker for r in services})  # a worker's first
    assert all(0 <= r.start < np.inf for r in services)


def test_process_workers_serve_every_query_and_agree_with_the_model() -> None:
    arrivals = np.linspace(0, 0.2, 40)
    sizes = np.arange(40) % 90 + 1
    with Server(SMALL, workers=2, processes=True, queue_capacity=64) as server:
        assert server.processes and server.workers == 2
        r = server.run(arrivals, sizes, Policy(32))
        assert r.shed == 0 and np.all(np.isfinite(r.latency_ms)) and np.all(r.latency_ms > 0)
        assert sorted((r.query, r.part) for r in server.last_service) == sorted(
            (i, k) for i in range(40) for k in range(-(-int(sizes[i]) // 32)))
        assert sum(r.items for r in server.last_service) == sizes.sum()
        # A worker process is held for its forward and the hand-over both ways.
        assert all(0 < r.seconds < r.held for r in server.last_service)
        _check_worker_timelines(server.last_service, 2)
        # Overload: the bounded queue sheds and every query is still accounted for.
        r = server.run(np.zeros(200), np.full(200, 64), Policy(16))
        assert r.shed > 0 and r.shed + np.isfinite(r.latency_ms).sum() == 200
    with pytest.raises(RuntimeError, match="closed"):
        server.run(arrivals, sizes, Policy(32))


def _accounted(r: Any, n: int) -> int:
    """Served queries of a run of ``n``, checking that each is served, shed or failed."""
    served = int(np.isfinite(r.latency_ms).sum())
    assert served + r.shed + r.failed == n and r.queries == n
    return served


def test_a_dead_worker_process_fails_its_query_and_is_replaced() -> None:
    import signal
    import threading

    with Server(SMALL, workers=2, processes=True) as server:
        victim = server.worker_pids[0]
        timer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        timer.start()
        # Not a hang, not a wrong answer, not a lost run: the query the worker held fails,
        # the others are served by the survivor and the replacement.
        r = server.run(np.linspace(0, 3.0, 300), np.full(300, 200), Policy(16), timeout_s=30)
        timer.join()
        assert _accounted(r, 300) >= 250 and r.failed <= 1
        assert victim not in server.worker_pids and None not in server.worker_pids
        r = server.run(np.linspace(0, 0.1, 10), np.full(10, 50), Policy(16))
        assert r.shed == 0 and r.failed == 0 and np.all(np.isfinite(r.latency_ms))
        # A run past its deadline: the workers still busy are replaced, and the next run
        # is served as usual.
        with pytest.raises(TimeoutError):
            server.run(np.zeros(300), np.full(300, 1024), Policy(1024), timeout_s=0.001)
        r = server.run(np.linspace(0, 0.1, 10), np.full(10, 50), Policy(16))
        assert r.shed == 0 and np.all(np.isfinite(r.latency_ms))


def _children() -> set[int]:
    """Process ids of this process's live children."""
    psutil = pytest.importorskip("psutil")
    return {p.pid for p in psutil.Process().children()
            if p.status() != psutil.STATUS_ZOMBIE}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_worker_processes_killed_again_and_again_lose_no_query_and_leak_nothing() -> None:
    """Fault injection: a worker process is killed every 0.4 s through a 3 s run (five
    deaths); every query is served, shed or failed, the run ends within its timeout, and
    once the server is closed no worker process and no descriptor of theirs is left."""
    import signal
    import threading

    fds, kids = len(os.listdir("/proc/self/fd")), _children()
    with Server(SMALL, workers=2, processes=True, queue_capacity=64) as server:
        stop = threading.Event()
        killed: list[int] = []

        def killer() -> None:
            rng = np.random.default_rng(1)
            while not stop.wait(0.4) and len(killed) < 5:
                alive = [p for p in server.worker_pids if p is not None]
                if alive:
                    victim = alive[int(rng.integers(len(alive)))]
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                        killed.append(victim)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            r = server.run(np.linspace(0, 3.0, 400), np.full(400, 100), Policy(16),
                           timeout_s=60)
        finally:
            stop.set()
            thread.join()
        assert len(killed) >= 3
        served = _accounted(r, 400)
        assert served > 0 and r.failed <= len(killed)
        assert not set(killed) & set(server.worker_pids)
    assert _children() <= kids
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_a_run_gives_up_when_workers_keep_dying() -> None:
    import signal

    with Server(SMALL, workers=1, processes=True) as server:
        # Kill the one worker whenever it is back, from the parent's event loop.
        original = server._procs.poll

        def poll(timeout_s: float) -> list:
            for pid in server.worker_pids:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return original(timeout_s)

        server._procs.poll = poll
        with pytest.raises(WorkerError, match=r"died \d+ times in this run"):
            server.run(np.linspace(0, 1.0, 50), np.full(50, 50), Policy(16), timeout_s=120)
        server._procs.poll = original
        r = server.run(np.linspace(0, 0.1, 10), np.full(10, 50), Policy(16))
        assert r.failed == 0 and r.shed == 0


def test_worker_processes_serve_with_a_millisecond_selector_too() -> None:
    """Past select(2)'s descriptor limit the parent waits on the platform's default selector,
    in whole milliseconds, and sleeps briefly before an arrival instead: every query is
    still served, and in its sub-requests."""
    with Server(SMALL, workers=1, processes=True) as server:
        assert server._procs is not None and server._procs.exact_timeouts
        server._procs._coarsen()
        assert not server._procs.exact_timeouts
        r = server.run(np.linspace(0, 0.05, 20), np.full(20, 40), Policy(16))
    assert r.shed == 0 and np.all(np.isfinite(r.latency_ms)) and np.all(r.latency_ms > 0)
    assert sorted((x.query, x.part) for x in server.last_service) == [
        (i, k) for i in range(20) for k in range(3)]


def test_worker_process_errors_are_reported_with_their_traceback() -> None:
    from recengine.serving.processes import WorkerProcesses

    procs = WorkerProcesses(SMALL.build_args, workers=1)
    try:
        procs.busy[0] = False
        procs.conns[0].send_bytes(b"not a sub-request")
        events = procs.poll(60.0)
        assert events and events[0][:2] == ("error", 0)
        message, details = events[0][2]
        assert "unpack requires a buffer" in message and "Traceback" in details
    finally:
        procs.close()
    with pytest.raises(RuntimeError, match=r"failed to start: .*unknown model"):
        WorkerProcesses({"name": "rmc9"}, workers=1)
    with pytest.raises(ValueError, match=r"recengine\.models\.build"):
        Server(torch.nn.Linear(2, 2), workers=1, processes=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_cuda_accelerator_runs_whole_queries() -> None:
    server = Server(SMALL, workers=1, accelerator=Accelerator.cuda(SMALL))
    r = server.run(np.array([0.0, 0.0]), np.array([500, 600]), Policy(64, 400))
    assert r.offloaded == 2 and np.all(np.isfinite(r.latency_ms))


def test_the_profile_reruns_an_overloaded_batch_at_the_load_it_says() -> None:
    """A forward that is fast alone (the first guess) and slow when served: the profile's
    first run overloads the worker, so it runs again at 80% of the capacity it saw, and the
    curve is the time a sub-request held its worker (not its wait in the queue)."""
    server = Server(SMALL, workers=1)
    calls: list[int] = []

    def forward(batch: rm.Batch) -> None:
        calls.append(len(batch))
        if len(calls) > 3:  # the first three (the guess) return at once
            time.sleep(0.003)

    server._forward = forward
    rates: list[float] = []
    run = server.run

    def spy(arrivals, sizes, policy, **kw):  # type: ignore[no-untyped-def]
        rates.append(len(arrivals) / max(float(arrivals[-1]), 1e-9))
        return run(arrivals, sizes, policy, **kw)

    server.run = spy  # type: ignore[method-assign]
    curve = server.profile((8,), load=0.8, queries=40, query_items=8, span_s=0.2)
    assert 3.0 <= curve(8) < 6.0  # the held time, not a queueing delay of tens of ms
    # The spread is of the last run's held times around their median.
    held = sorted(1e3 * r.held for r in server.last_service)
    assert len(curve.spread) == 1 and curve.spread[0][0] <= 1.0 <= curve.spread[0][-1]
    assert curve.ms[0] * curve.spread[0][0] == pytest.approx(held[0], rel=0.2)
    assert curve.ms[0] * curve.spread[0][-1] <= held[-1] + 1e-9
    assert len(rates) >= 2 and rates[-1] < 0.5 * rates[0]
    assert rates[-1] < 1.4 * 0.8 / 0.003  # about 80% of the capacity the run showed
    with pytest.raises(ValueError, match="at least one query"):
        server.profile((8,), queries=0)
    with pytest.raises(ValueError, match="load"):
        server.profile((8,), load=1.5)
    # Saturated (the default): one run, every query at once, still the held time.
    rates.clear()
    curve = server.profile((8,), load=None, queries=20, query_items=8)
    assert len(rates) == 1 and 3.0 <= curve(8) < 6.0
    # A query of about query_items items is split into sub-requests of the batch size.
    sizes: list[int] = []
    server.run = lambda a, n, p, **kw: sizes.extend(n) or run(a, n, p, **kw)  # type: ignore
    server.profile((8,), load=None, queries=10, query_items=30, span_s=0)
    assert sizes == [32] * 10 and sorted({r.items for r in server.last_service}) == [8]


def test_a_profiling_run_lasts_its_span_not_a_count_of_queries() -> None:
    """On many cores a fixed count of queries passes in a few ms (one slow stretch then moves
    the median): each profiling run serves about ``span_s`` seconds of queries at its rate."""
    server = Server(SMALL, workers=1)
    server._forward = lambda batch: time.sleep(0.001)  # type: ignore[method-assign]
    spans: list[tuple[int, float]] = []
    run = server.run

    def spy(arrivals, sizes, policy, **kw):  # type: ignore[no-untyped-def]
        spans.append((len(arrivals), float(arrivals[-1])))
        return run(arrivals, sizes, policy, **kw)

    server.run = spy  # type: ignore[method-assign]
    server.profile((8,), load=0.5, queries=5, query_items=8, span_s=0.3)
    n, last = spans[-1]
    assert n > 5 and 0.15 < last < 0.6  # about 0.3 s at half of ~1,000 queries/s
    spans.clear()
    server.profile((8,), load=0.5, queries=5, query_items=8, span_s=0)
    assert spans[-1][0] == 8  # without a span: `queries`, and eight sub-requests a worker
    with pytest.raises(ValueError, match="span_s"):
        server.profile((8,), span_s=-1.0)


_MMAPPED_BLOCKS = """
import ctypes, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
if sys.argv[1] == "steady":
    from recengine.serving.allocator import steady_malloc
    assert steady_malloc()
elif sys.argv[1] == "server":
    import recengine.models as rm
    from recengine.serving import Server
    Server(rm.build("ncf", scale=0.01), workers=1, steady_malloc=sys.argv[2] == "1")
before = libc.mallinfo2().hblks
libc.malloc(4 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not hasattr(os, "confstr") or "glibc" not in (
    os.confstr("CS_GNU_LIBC_VERSION") or ""), reason="glibc's malloc thresholds")
def test_steady_malloc_serves_large_blocks_from_the_heap() -> None:
    """A fresh process's malloc gives a 4 MiB block its own mmap (a page-faulting forward);
    with the thresholds fixed (as a threaded server fixes them by default) it comes from the
    heap."""
    import subprocess
    import sys

    def mmapped(*args: str) -> int:
        out = subprocess.run([sys.executable, "-c", _MMAPPED_BLOCKS, *args], check=True,
                             capture_output=True, text=True).stdout
        return int(out.split()[-1])

    assert mmapped("plain") == 1
    assert mmapped("steady") == 0
    assert mmapped("server", "1") == 0 and mmapped("server", "0") == 1


def test_profile_loads_profiles_the_server_at_each_load() -> None:
    """Curves by load: one profile per load, each run at its own load's rate; a forward that
    slows the busier its worker is gives a slower curve at the higher load."""
    server = Server(SMALL, workers=1)
    last = [0.0]

    def forward(batch: rm.Batch) -> None:
        # 1 ms after an idle gap of over 2 ms, 2 ms back to back (a busy worker is slower).
        now = time.perf_counter()
        time.sleep(0.001 if now - last[0] > 0.002 else 0.002)
        last[0] = time.perf_counter()

    server._forward = forward  # type: ignore[method-assign]
    curves = server.profile_loads((0.2, 0.95), batches=(8,), queries=30, query_items=8,
                                  span_s=0.3)
    assert curves.loads == (0.2, 0.95) and len(curves.curves) == 2
    assert curves.curves[0](8) < curves.curves[1](8)
    assert 0.9 < curves.curves[0](8) < 1.6 < curves.curves[1](8) < 2.6
    for bad in ((), (0.9, 0.5), (0.0, 0.5), (0.5, 1.2)):
        with pytest.raises(ValueError, match="increasing fractions"):
            server.profile_loads(bad, batches=(8,))


def _idle_dispatch_ms(services: list[Service], arrivals_s: np.ndarray) -> float:
    """The median time (ms) from a query's arrival to the start of a sub-request of it whose
    worker was idle at the arrival: the server's admission and wake-up time."""
    wait = np.array([r.start - arrivals_s[r.query] for r in services])
    # The worker was idle at the arrival where it had been idle at least that long.
    return 1e3 * float(np.median(wait[idle_before(services) >= wait]))


def test_the_simulator_replays_a_real_run_within_15_percent() -> None:
    """The simulator's queueing model against the real server: a real run of rmc1 at about
    60% load (whole and split queries), then the same queries simulated with the service
    time each sub-request really took and the server's measured dispatch delay (a few
    hundred microseconds from arrival to a worker's start, about 8% of a whole query's
    latency here). Mean and p95 latency agree within 15%. (How well a profiled *curve*
    predicts the server is measured in benches/serve_agreement.py: timing belongs in
    benchmarks.)"""
    model = rm.build("rmc1")
    workers = min(os.cpu_count() or 1, 2)
    server = Server(model, workers=workers)
    for policy in (Policy(1024), Policy(48)):
        # About 60% of capacity from a quick timing of one query's worth of sub-requests.
        t0 = time.perf_counter()
        server.run(np.zeros(5), np.full(5, 164), policy, warmup=0)
        per_query_s = (time.perf_counter() - t0) * workers / 5
        arrivals, sizes = Workload(0.6 / per_query_s, seed=5).queries(400)
        real = server.run(arrivals, sizes, policy)
        parts = {(r.query, r.part): 1e3 * r.seconds for r in server.last_service}
        assert all(r.seconds <= r.held for r in server.last_service)
        _check_worker_timelines(server.last_service, workers)
        dispatch = _idle_dispatch_ms(server.last_service, arrivals)
        assert 0 < dispatch < 5
        sim = simulate(arrivals, sizes, policy, FLAT_CURVE, workers, part_ms=parts,
                       dispatch_ms=dispatch)
        assert len(parts) == int((-(-sizes // policy.batch_size)).sum())
        real_mean, sim_mean = real.latency_ms[40:].mean(), sim.latency_ms[40:].mean()
        assert abs(real_mean - sim_mean) <= 0.15 * real_mean, (policy, real_mean, sim_mean)
        assert abs(real.p95 - sim.p95) <= 0.15 * real.p95, (policy, real.p95, sim.p95)


@pytest.mark.parametrize("processes", [False, True])
def test_a_controlled_real_run_accounts_for_every_query_and_steps_the_rate(
        processes: bool) -> None:
    from recengine.sched import ControllerSettings, RateController

    s = ControllerSettings(window=8, updates=6, last=3)
    c = RateController(20.0, 300.0, s)
    sizes = np.full(s.queries + 64, 48)
    with Server(SMALL, workers=1, queue_capacity=16, processes=processes) as server:
        r = server.run_controlled(sizes, Policy(16), c)
    assert c.done and len(c.rates) == s.updates == len(c.p95s)
    # Arrivals stopped once the controller was done: the run is the queries dispatched.
    assert s.queries <= r.queries < sizes.size
    served = np.isfinite(r.latency_ms)
    assert served.sum() + r.shed == r.queries and np.all(r.latency_ms[served] > 0)
    # Every step came from the p95 of eight completed queries of this run.
    done = np.sort(r.latency_ms)
    assert all(done[0] <= p for p in c.p95s)


def test_serve_simulated_prints_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "serve.json"
    assert main(["serve", "--simulate", "--model", "ncf", "--cores", "4,16", "--scale", "0.01",
                 "--batch-sizes", "1024,128,32", "--queries", "300", "--json",
                 "--service-times", "profiled", "--out", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["cores"] for r in rows] == [4, 16]
    for r in rows:
        for key in ("model", "mode", "cores", "static_qps", "deeprecsched_qps", "improvement",
                    "p95_ms", "target_ms"):
            assert key in r
        assert r["mode"] == "simulated" and r["target_ms"] == 5.0
        assert r["deeprecsched_qps"] >= r["static_qps"] > 0
        # The baseline splits queries into 32 items; the gain over whole queries comes from
        # DeepRecSched's own try at 1024 (no query is larger).
        assert r["static_batch"] == 32
        whole = next(t["qps"] for t in r["tried"] if t["batch_size"] == 1024)
        assert r["whole_qps"] == whole and r["gain_over_whole"] == pytest.approx(
            r["deeprecsched_qps"] / whole)
        assert r["p95_ms"] <= r["target_ms"]
        # The simulator drew service times from the profile's spread around its medians.
        assert r["service_times"] == "profiled"
        spread = r["cpu_curve"]["spread"]
        assert len(spread) == len(r["cpu_curve"]["batches"])
        assert all(row[0] <= 1.0 <= row[-1] for row in spread)
    written = json.loads(out.read_text())
    assert written["config"]["models"] == ["ncf"]
    assert written["summary"]["mean_gain_over_whole"] == pytest.approx(
        sum(r["gain_over_whole"] for r in rows) / len(rows))
    sweep = written["summary"]["gain_over_one_static_batch"]
    assert set(sweep) == {"4", "16"} and set(sweep["4"]) == {"1024", "128", "32"}
    assert all(g is None or g >= 1.0 for sw in sweep.values() for g in sw.values())


def test_serve_simulates_with_curves_by_load(capsys, tmp_path, monkeypatch) -> None:
    """``--profile-loads``: the server is profiled at each load (the profile itself is
    tested above; here a curve of 10 us an item at 30% load and 20 us at 90%, to be fast),
    and the simulator serves each run at its load's curve: between the two curves' QPS."""
    loads: list[float] = []

    def profile(self, batches=(1, 1024), load=0.9, **options):  # type: ignore[no-untyped-def]
        loads.append(load)
        return LatencyCurve((1, 1024), (0.01, 10.24)).scaled(1.0 if load < 0.5 else 2.0)

    monkeypatch.setattr(Server, "profile", profile)
    out = tmp_path / "serve.json"
    args = ["serve", "--simulate", "--model", "ncf", "--cores", "8", "--scale", "0.01",
            "--batch-sizes", "1024", "--static-batch", "1024", "--queries", "500",
            "--target-ms", "5"]
    assert main([*args, "--profile-loads", "0.3,0.9", "--out", str(out)]) == 0
    assert loads == [0.3, 0.9]
    assert "curves by load (profiled at 0.3, 0.9)" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert row["cpu_curve"]["loads"] == [0.3, 0.9] and len(row["cpu_curve"]["curves"]) == 2
    qps = []
    for one in ("0.3", "0.9"):
        assert main([*args, "--profile-loads", one, "--json"]) == 0
        qps.append(json.loads(capsys.readouterr().out)[0]["static_qps"])
    assert qps[1] < row["static_qps"] < qps[0]


def test_serve_searches_rates_with_r3s_controller(capsys) -> None:
    assert main(["serve", "--simulate", "--model", "ncf", "--cores", "8", "--scale", "0.01",
                 "--batch-sizes", "1024,64", "--static-batch", "64", "--search", "controller",
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["search"] == "controller" and row["deeprecsched_qps"] >= row["static_qps"] > 0
    assert [t["batch_size"] for t in row["tried"]] == [1024, 64]


def test_static_sweep_averages_gains_and_marks_sizes_that_fail_a_model() -> None:
    from recengine.serving.study import static_sweep

    def row(drs: float, tried: dict[int, float]) -> dict:
        return {"deeprecsched_qps": drs, "tried": [
            {"batch_size": b, "offload_threshold": None, "qps": q} for b, q in tried.items()]}

    rows = [row(100.0, {1024: 100.0, 64: 50.0}), row(300.0, {1024: 0.0, 64: 300.0, 32: 1.0})]
    assert static_sweep(rows) == {1024: None, 64: pytest.approx(1.5)}


def test_serve_takes_arrival_processes_and_row_distributions(capsys) -> None:
    pytest.importorskip("recbole", reason="MovieLens-100k comes with the recbole wheel")
    assert main(["serve", "--simulate", "--model", "ncf", "--cores", "4", "--scale", "0.01",
                 "--batch-sizes", "1024,64", "--queries", "200", "--arrivals", "poisson-ms",
                 "--distribution", "movielens"]) == 0
    text = capsys.readouterr().out
    assert "poisson-ms arrivals" in text and "movielens rows" in text
    batch = SMALL.sample_batch(500, distribution="movielens", seed=1)
    for ids, table in zip(batch.sparse, SMALL.tables):
        assert 0 <= int(ids.min()) and int(ids.max()) < table.num_rows


@pytest.mark.parametrize("workers", [[], ["--processes"]])
def test_serve_on_the_real_server(workers: list[str], capsys) -> None:
    assert main(["serve", "--model", "ncf", "--scale", "0.01", "--cores", "1", *workers,
                 "--batch-sizes", "1024,64", "--queries", "150", "--target-ms", "20"]) == 0
    text = capsys.readouterr().out
    assert "real server" in text and "ncf" in text
    assert ("worker processes" in text) == bool(workers)


@pytest.mark.parametrize("args, match", [
    (["--model", "rmc9"], "unknown model"),
    (["--target-ms", "-3"], "positive"),
    (["--cores", "1000"], "use --simulate"),
    (["--simulate", "--cores", "4096"], "1024 cores the simulator models"),
    (["--accelerator", "modeled"], "accelerator-curves"),
    (["--simulate", "--accelerator", "cuda"], "modeled accelerator"),
    (["--arrivals", "bursty"], "invalid choice"),
    (["--target-scale", "0"], "positive"),
    (["--simulate", "--profile-workers", "4096"], "cores here"),
    (["--confirm", "-1"], "-1 is not in [0, 100]"),
    (["--simulate", "--service-times", "mean"], "invalid choice"),
    (["--search", "grid"], "invalid choice"),
    (["--simulate", "--profile-loads", "0.9,0.3"], "increasing fractions"),
    (["--simulate", "--profile-loads", "1.5"], "increasing fractions"),
    (["--simulate", "--profile-loads", "0"], "positive"),
    (["--simulate", "--search", "controller", "--arrivals", "diurnal"], "--search bisect"),
])
def test_serve_rejects_bad_options(args: list[str], match: str, capsys) -> None:
    try:
        code = main(["serve", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code != 0
    assert match in capsys.readouterr().err


def test_repeats_report_the_median_repeat_and_every_gain() -> None:
    """With repeats, a row is the repeat of the median gain and keeps every repeat's gains;
    the summary gives each repeat's mean gain (their spread is the run-to-run noise)."""
    from recengine.serving.study import _median_repeat, summarize_study

    def run(gain: float, model: str) -> dict:
        return {"model": model, "cores": 4, "improvement": gain, "gain_over_whole": 1.0,
                "static_qps": 100.0, "deeprecsched_qps": 100.0 * gain, "tried": []}

    a = _median_repeat([run(2.0, "ncf"), run(5.0, "ncf"), run(1.5, "ncf")])
    assert a["improvement"] == 2.0 and a["improvement_repeats"] == [2.0, 5.0, 1.5]
    assert a["deeprecsched_qps_repeats"] == [200.0, 500.0, 150.0]
    b = _median_repeat([run(1.0, "wnd"), run(1.2, "wnd"), run(1.1, "wnd")])
    summary = summarize_study([a, b])
    assert summary["mean_improvement"] == pytest.approx((2.0 + 1.1) / 2)
    assert summary["mean_improvement_repeats"] == pytest.approx([1.5, 3.1, 1.3])
