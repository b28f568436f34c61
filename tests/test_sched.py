"""The simulator (exact for its queueing model, deterministic), the throughput search and
DeepRecSched against known optima, and bad input."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.sched import (
    LatencyCurve,
    Policy,
    RunResult,
    SimulatedServer,
    deeprecsched,
    max_qps,
    simulate,
    static_baseline,
)
from recengine.workload import QuerySizes

FLAT = LatencyCurve((1, 1024), (2.0, 2.0))  # 2 ms whatever the batch


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 1024)), min_size=1, max_size=40))
def test_one_core_whole_queries_follow_lindleys_recursion(qs: list[tuple[float, int]]) -> None:
    gaps, sizes = zip(*qs)
    arrivals = np.cumsum(gaps) / 1e3
    curve = LatencyCurve((1, 64, 1024), (0.5, 3.0, 20.0))
    r = simulate(arrivals, np.array(sizes), Policy(1024), curve, 1, warmup=0)
    end = 0.0
    for a, n, lat in zip(arrivals * 1e3, sizes, r.latency_ms):
        end = max(a, end) + curve(n)
        assert lat == pytest.approx(end - a)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(1, 300)), min_size=1, max_size=30),
       st.integers(1, 64), st.integers(1, 6))
def test_sim_latency_is_bounded_and_more_cores_never_hurt(qs: list[tuple[float, int]], b: int,
                                                         cores: int) -> None:
    gaps, sizes = zip(*qs)
    arrivals, sizes_a = np.cumsum(gaps) / 1e3, np.array(sizes)
    curve = LatencyCurve((1, 16, 256), (0.3, 1.0, 9.0))
    few = simulate(arrivals, sizes_a, Policy(b), curve, cores, warmup=0)
    more = simulate(arrivals, sizes_a, Policy(b), curve, cores + 1, warmup=0)
    parts = -(-sizes_a // b)
    # At least its slowest sub-request; with a core per sub-request, exactly that.
    slowest = np.maximum(curve.many(np.minimum(sizes_a, b)),
                         curve.many(sizes_a - (parts - 1) * b))
    assert np.all(few.latency_ms >= slowest - 1e-9)
    assert np.all(more.latency_ms <= few.latency_ms + 1e-9)
    alone = simulate(arrivals, sizes_a, Policy(b), curve, int(parts.sum()), warmup=0)
    np.testing.assert_allclose(alone.latency_ms, slowest)


def test_the_simulator_is_deterministic_and_sheds_only_past_its_queue() -> None:
    sim = SimulatedServer(FLAT, cores=4, queries=500, seed=3)
    a, b = sim.run(Policy(64), 500.0), sim.run(Policy(64), 500.0)
    np.testing.assert_array_equal(a.latency_ms, b.latency_ms)
    assert a.shed == 0
    arrivals = np.zeros(10)
    r = simulate(arrivals, np.full(10, 100), Policy(10), FLAT, 1, queue_capacity=25)
    # 10 sub-requests each; the first starts at once, so 2 queries fit (1 running + 19 queued
    # is within 25; a third would make 29 waiting).
    assert r.shed == 8 and np.isinf(r.latency_ms).sum() == 8
    assert r.latency_ms[0] == pytest.approx(20.0) and r.latency_ms[1] == pytest.approx(40.0)


def test_offloaded_queries_run_on_the_accelerator() -> None:
    acc = LatencyCurve((1, 1024), (1.0, 1.0))
    r = simulate(np.array([0.0, 0.0, 0.0]), np.array([10, 500, 600]), Policy(1024, 400),
                 FLAT, 1, accelerator=acc, warmup=0)
    assert r.offloaded == 2
    np.testing.assert_allclose(r.latency_ms, [2.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="no accelerator"):
        simulate(np.zeros(1), np.ones(1, dtype=int), Policy(8, 4), FLAT, 1)


class _Known:
    """A backend whose policies sustain known rates: p95 is 1 ms up to the policy's rate,
    10 ms beyond."""

    has_accelerator = True
    confirm = 0

    def __init__(self, qps: dict[Policy, float]) -> None:
        self.qps, self.runs = qps, 0

    def run(self, policy: Policy, rate_qps: float) -> RunResult:
        self.runs += 1
        return RunResult(np.full(20, 1.0 if rate_qps <= self.qps[policy] else 10.0))

    def capacity_hint(self, policy: Policy) -> float:
        return 100.0

    def largest_query(self) -> int:
        return 1024


def test_max_qps_brackets_and_bisects_to_the_known_rate() -> None:
    for true in (0.5, 37.0, 100.0, 12_345.0):
        qps, result = max_qps(lambda q, t=true: _Known({Policy(1): t}).run(Policy(1), q), 5.0,
                              100.0, rel_tol=0.01)
        assert true / 1.01 <= qps <= true and result is not None
    assert max_qps(lambda q: RunResult(np.full(20, 9.0)), 5.0, 10.0) == (0.0, None)


def test_a_confirmed_miss_keeps_one_slow_run_from_ending_the_search_low() -> None:
    """A server that sustains 70 QPS but whose first run at every rate has a slow stretch:
    without confirmation the search halves down to the starting rate / 2**k; with one
    confirming run it finds 70."""
    def flaky() -> Callable[[float], RunResult]:
        seen: set[float] = set()

        def run(q: float) -> RunResult:
            slow = q not in seen or q > 70
            seen.add(q)
            return RunResult(np.full(20, 9.0 if slow else 1.0))
        return run

    assert max_qps(flaky(), 5.0, 50.0) == (0.0, None)
    qps, result = max_qps(flaky(), 5.0, 50.0, rel_tol=0.01, confirm=1)
    assert 70 / 1.01 <= qps <= 70 and result is not None and result.meets(5.0)


def test_deeprecsched_finds_the_known_optimum_then_the_offload_threshold() -> None:
    batch = {1024: 100, 512: 100, 384: 90, 256: 95, 192: 130, 128: 160, 96: 150, 64: 140,
             48: 120, 32: 100}
    qps = {Policy(b): float(q) for b, q in batch.items()}
    qps.update({Policy(128, t): 160.0 + (t == 256) * 40 + (t == 192) * 10 for t in
                (1024, 768, 512, 384, 256, 192, 128, 96, 64, 32, 16, 1)})
    tuned = deeprecsched(_Known(qps), 5.0, rel_tol=0.01)
    assert tuned.policy == Policy(128, 256)
    assert 200 / 1.01 <= tuned.qps <= 200
    # R3's climb stops at the first drop (384) and keeps the whole-query policy.
    r3 = deeprecsched(_Known(qps), 5.0, patience=0, thresholds=(), rel_tol=0.01)
    assert r3.policy.batch_size == 1024 and [p.batch_size for p, _ in r3.tried] == [1024, 512, 384]
    base = static_baseline(_Known(qps), 5.0, rel_tol=0.01)
    assert base.policy == Policy(1024) and 100 / 1.01 <= base.qps <= 100


def test_on_a_simulated_server_deeprecsched_matches_a_brute_force_search() -> None:
    # No batching efficiency and a tight target: splitting pays, up to a point.
    points = tuple(2**k for k in range(11))
    cpu = LatencyCurve(points, tuple(0.1 + 0.2 * b for b in points))
    sim = SimulatedServer(cpu, cores=8, queries=600, sizes=QuerySizes.lognormal(),
                          span_s=0.5)
    target = 20.0
    sizes = (1024, 256, 128, 64, 32, 16, 8)  # the best (16) lies inside
    brute = {b: max_qps(lambda q, b=b: sim.run(Policy(b), q), target,
                        sim.capacity_hint(Policy(b)))[0] for b in sizes}
    tuned = deeprecsched(sim, target, batch_sizes=sizes)
    assert tuned.policy.batch_size == max(brute, key=brute.get)
    assert tuned.qps == pytest.approx(max(brute.values()))
    assert tuned.qps > 1.5 * brute[1024]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=30), min_size=1,
                max_size=5), st.integers(1, 70))
def test_a_spread_keeps_the_quantiles_of_the_timings(times: list[list[float]], q: int) -> None:
    batches = tuple(4 ** k for k in range(len(times)))
    c = LatencyCurve.from_samples(batches, times, quantiles=q)
    assert c == LatencyCurve.from_dict(c.to_dict())
    for b, t, m, row in zip(batches, times, c.ms, c.spread):
        assert m == pytest.approx(np.median(t))
        assert len(row) == q and list(row) == sorted(row)
        # Equally likely draws: the k-th is the ((k + 0.5) / q)-quantile of the timings.
        u = (np.arange(q) + 0.5) / q
        drawn = c.sample(np.full(q, b), u)
        assert drawn == pytest.approx(np.quantile(t, u, method="inverted_cdf"))
        assert min(t) - 1e-9 <= drawn.min() and drawn.max() <= max(t) + 1e-9


def test_sample_takes_the_spread_of_the_nearest_profiled_size() -> None:
    c = LatencyCurve((1, 16, 256), (1.0, 2.0, 8.0), spread=((1.0, 1.0), (1.0, 3.0), (0.5, 2.0)))
    u = np.array([0.9] * 6)
    # Nearest in log(batch): 3 -> 1 (the midpoint is 4), 5 -> 16, 60 -> 16, 70 -> 256.
    got = c.sample(np.array([1, 3, 5, 60, 70, 512]), u)
    assert got == pytest.approx([1.0, c(3), 3 * c(5), 3 * c(60), 2 * c(70), 2 * c(512)])
    assert c.sample(np.array([16]), np.array([0.1]))[0] == pytest.approx(2.0)
    assert LatencyCurve(c.batches, c.ms).sample(np.array([16]), u[:1])[0] == pytest.approx(2.0)
    assert c.scaled(2.0).spread == c.spread


def test_the_simulator_draws_service_times_from_the_spread() -> None:
    """One sub-request per query at low load on many cores: a query's latency is its service
    time, so p95 is the spread's tail (1 in 10 sub-requests 10x the median) where the median
    alone gives 1 ms, and the run repeats exactly for a seed."""
    tail = LatencyCurve.from_samples((1, 1024), [[1.0] * 9 + [10.0]] * 2, quantiles=20)
    sizes = QuerySizes.fixed(64)
    sim = SimulatedServer(tail, cores=64, sizes=sizes, queries=2000, seed=3, spread=True)
    flat = SimulatedServer(tail, cores=64, sizes=sizes, queries=2000, seed=3)  # the median
    r, again, median = (s.run(Policy(1024), 10.0) for s in (sim, sim, flat))
    assert r.p95 == pytest.approx(10.0) and r.p50 == pytest.approx(1.0)
    assert median.p95 == pytest.approx(1.0)
    assert np.array_equal(r.latency_ms, again.latency_ms)
    # The draws are the spread's: about a tenth of the queries take 10 ms.
    assert 0.07 < np.mean(r.latency_ms > 5) < 0.13
    # Saturated: utilisation counts the drawn work (mean 1.9 ms), not the median's 1 ms.
    busy = SimulatedServer(tail, cores=1, sizes=sizes, queries=2000, seed=3, spread=True).run(
        Policy(1024), 400.0)
    assert busy.utilization == pytest.approx(400 * 1.9e-3, rel=0.1)
    # Without a spread, drawing changes nothing.
    plain = LatencyCurve((1, 1024), (1.0, 1.0))
    assert np.array_equal(
        SimulatedServer(plain, 4, sizes=sizes, queries=200, spread=True).run(
            Policy(16), 900.0).latency_ms,
        SimulatedServer(plain, 4, sizes=sizes, queries=200).run(
            Policy(16), 900.0).latency_ms)


@pytest.mark.parametrize("call, match", [
    (lambda: Policy(0), "batch size"),
    (lambda: Policy(8, 0), "offload threshold"),
    (lambda: max_qps(lambda q: RunResult(np.ones(3)), 0.0, 1.0), "target"),
    (lambda: max_qps(lambda q: RunResult(np.ones(3)), 5.0, -1.0), "starting rate"),
    (lambda: max_qps(lambda q: RunResult(np.ones(3)), 5.0, 1.0, confirm=-1), "confirm"),
    (lambda: LatencyCurve((4, 2), (1.0, 2.0)), "increasing"),
    (lambda: LatencyCurve((1, 2), (1.0, -2.0)), "positive"),
    (lambda: LatencyCurve((1, 2), (1.0, 2.0), spread=((1.0,),)), "one row per batch"),
    (lambda: LatencyCurve((1, 2), (1.0, 2.0), spread=((1.0,), (1.0, 2.0))), "same number"),
    (lambda: LatencyCurve((1,), (1.0,), spread=((2.0, 1.0),)), "sorted"),
    (lambda: LatencyCurve((1,), (1.0,), spread=((0.0, 1.0),)), "positive"),
    (lambda: LatencyCurve.from_samples((1, 2), [[1.0]]), "sets of timings"),
    (lambda: LatencyCurve.from_samples((1,), [[]]), "at least one"),
    (lambda: LatencyCurve.from_samples((1,), [[1.0, -1.0]]), "positive"),
    (lambda: LatencyCurve.from_samples((1,), [[1.0]], quantiles=0), "quantile"),
    (lambda: SimulatedServer(FLAT, cores=0), "core"),
    (lambda: simulate(np.zeros(2), np.ones(3, dtype=int), Policy(1), FLAT, 1), "one length"),
    (lambda: deeprecsched(_Known({}), 5.0, batch_sizes=()), "at least one batch size"),
])
def test_bad_scheduling_input_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
