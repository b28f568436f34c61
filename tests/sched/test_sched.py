"""The simulator (exact for its queueing model, deterministic), the throughput search and
DeepRecSched against known optima, and bad input."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.sched import (
    STATIC,
    ControllerSettings,
    CurvesByLoad,
    DeviceStage,
    LatencyCurve,
    Policy,
    RateController,
    RunResult,
    SimulatedServer,
    controlled_qps,
    deeprecsched,
    max_qps,
    simulate,
    simulate_controlled,
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
    # No shedding (a queue that never fills): which queries a full queue sheds depends on the
    # core count, so "more cores never hurt" holds query by query only for queries both serve.
    big = 10**9
    few = simulate(arrivals, sizes_a, Policy(b), curve, cores, warmup=0, queue_capacity=big)
    more = simulate(arrivals, sizes_a, Policy(b), curve, cores + 1, warmup=0,
                    queue_capacity=big)
    assert few.shed == more.shed == 0
    parts = -(-sizes_a // b)
    # At least its slowest sub-request; with a core per sub-request, exactly that.
    slowest = np.maximum(curve.many(np.minimum(sizes_a, b)),
                         curve.many(sizes_a - (parts - 1) * b))
    assert np.all(few.latency_ms >= slowest - 1e-9)
    assert np.all(more.latency_ms <= few.latency_ms + 1e-9)
    alone = simulate(arrivals, sizes_a, Policy(b), curve, int(parts.sum()), warmup=0,
                     queue_capacity=big)
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


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.05), st.integers(1, 300)), min_size=1, max_size=30),
       st.sampled_from([8, 64, 512]), st.booleans())
def test_on_one_core_a_device_stage_adds_its_time_to_every_sub_request(
        qs: list[tuple[float, int]], b: int, first: bool) -> None:
    # One core never waits for the device: each sub-request holds it for both parts, as if
    # its curve were their sum.
    arrivals = np.cumsum([q[0] for q in qs])
    sizes = np.array([q[1] for q in qs])
    cpu = LatencyCurve((1, 1024), (0.2, 3.0))
    dev = LatencyCurve((1, 1024), (0.1, 1.0))
    both = LatencyCurve((1, 1024), (0.3, 4.0))
    staged = simulate(arrivals, sizes, Policy(b), cpu, 1, stage=DeviceStage(dev, first))
    plain = simulate(arrivals, sizes, Policy(b), both, 1)
    np.testing.assert_allclose(staged.latency_ms, plain.latency_ms)
    # A device that takes (next to) no time leaves the cores' queueing as it was.
    free = DeviceStage(LatencyCurve((1, 1024), (1e-9, 1e-9)), first)
    np.testing.assert_allclose(simulate(arrivals, sizes, Policy(b), cpu, 3, stage=free)
                               .latency_ms, simulate(arrivals, sizes, Policy(b), cpu, 3)
                               .latency_ms, atol=1e-6)


def test_cores_queue_for_a_shared_device() -> None:
    cpu = LatencyCurve((1, 1024), (1.0, 1.0))
    dev = LatencyCurve((1, 1024), (2.0, 2.0))
    at0 = np.zeros(3)
    # Lookups on the device first, one at a time: 2, 4, 6 ms, then 1 ms on the core each.
    r = simulate(at0, np.full(3, 8), Policy(8), cpu, 3, stage=DeviceStage(dev, first=True),
                 warmup=0)
    np.testing.assert_allclose(r.latency_ms, [3.0, 5.0, 7.0])
    # Dense part on the device after 1 ms on the core: the device is the bottleneck.
    r = simulate(at0, np.full(3, 8), Policy(8), cpu, 3, stage=DeviceStage(dev), warmup=0)
    np.testing.assert_allclose(r.latency_ms, [3.0, 5.0, 7.0])
    # Many cores cannot serve faster than the device: 500 QPS of 2 ms device parts.
    sim = SimulatedServer(cpu, 16, queries=400, stage=DeviceStage(dev),
                          sizes=QuerySizes.fixed(8))
    assert sim.capacity_hint(Policy(8)) == pytest.approx(500.0)
    assert sim.run(Policy(8), 300.0).p95 < 15 < 100 < sim.run(Policy(8), 600.0).p95
    # A GPU stage shares the accelerator's queue with whole offloaded queries.
    acc = LatencyCurve((1, 1024), (5.0, 5.0))
    r = simulate(np.zeros(2), np.array([500, 8]), Policy(8, 400), cpu, 2, accelerator=acc,
                 stage=DeviceStage(dev, accelerator=True), warmup=0)
    np.testing.assert_allclose(r.latency_ms, [5.0, 7.0])
    assert r.offloaded == 1


def _earliest_fit(device: object, parts: list[tuple[float, float, float]]) -> None:
    """Hand ``device`` parts (time since the last handed out, its delay to ready, its time)
    and check each one took the earliest idle stretch at or after it was ready that fits."""
    busy: list[tuple[float, float]] = []
    now = 0.0
    for gap, delay, took in parts:
        now += gap
        ready = now + delay
        end = device.take(ready, took, now)  # type: ignore[attr-defined]
        start = end - took
        assert start >= ready - 1e-9
        # No stretch it overlaps, and no earlier idle stretch at or after ready that fits.
        assert all(e <= start + 1e-9 or s >= end - 1e-9 for s, e in busy)
        for s0 in sorted({ready} | {e for _, e in busy if e >= ready}):
            if s0 < start - 1e-9:
                assert any(s < s0 + took - 1e-9 and e > s0 + 1e-9 for s, e in busy)
        busy.append((start, end))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.floats(0, 4), st.floats(0.01, 3)), min_size=1,
                max_size=40))
def test_a_shared_device_gives_each_part_the_earliest_idle_stretch_that_fits(
        parts: list[tuple[float, float, float]]) -> None:
    from recengine.sched.simulate import _Device

    _earliest_fit(_Device(), parts)
    # A part ready sooner than one handed out before it runs first, in the gap.
    device = _Device()
    assert device.take(5.0, 1.0, 0.0) == 6.0
    assert device.take(0.5, 1.0, 0.0) == 1.5


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
    # DeepRecSys's climb stops at the first drop (384) and keeps the whole-query policy.
    r3 = deeprecsched(_Known(qps), 5.0, patience=0, thresholds=(), rel_tol=0.01)
    assert r3.policy.batch_size == 1024 and [p.batch_size for p, _ in r3.tried] == [1024, 512, 384]
    # The static baseline splits every query into 32-item sub-requests by default.
    base = static_baseline(_Known(qps), 5.0, rel_tol=0.01)
    assert base.policy == STATIC == Policy(32) and 100 / 1.01 <= base.qps <= 100
    whole = static_baseline(_Known(qps), 5.0, rel_tol=0.01, policy=Policy(1024))
    assert whole.policy == Policy(1024) and 100 / 1.01 <= whole.qps <= 100


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


def test_the_controller_steps_on_each_window_of_completions_and_reads_the_median() -> None:
    s = ControllerSettings(window=4, step=2.0, stable=0.25, updates=6, last=3)
    c = RateController(10.0, 64.0, s, seed=0)
    # Windows of p95 under target / 1.25 (up), in the band (hold), over (down).
    for ms in [1.0, 1.0, 1.0, 7.0] + [8.5] * 4 + [3.0, 3.0, 3.0, 11.0] + [np.inf] * 4:
        c.observe(ms)
    assert c.rates == [128.0, 128.0, 64.0, 32.0] and c.p95s == [7.0, 8.5, 11.0, np.inf]
    assert not c.done
    for ms in [8.0] * 8:  # held twice: done
        c.observe(ms)
    assert c.done and c.rates[-2:] == [32.0, 32.0] and c.answer() == 32.0
    c.observe(0.1)  # after the last step: ignored
    assert len(c.rates) == 6
    # Gaps are exponential at the current rate, and the same for a seed.
    gaps = [RateController(10.0, 50.0, s, seed=1).gap_s() for _ in range(2)]
    assert gaps[0] == gaps[1] > 0
    many = RateController(10.0, 50.0, s, seed=2)
    assert np.mean([many.gap_s() for _ in range(4000)]) == pytest.approx(1 / 50, rel=0.05)
    ms = RateController(10.0, 50.0, ControllerSettings(process="poisson-ms"), seed=2)
    assert all(round(g * 1e3, 9) == round(g * 1e3) for g in (ms.gap_s() for _ in range(50)))


def test_a_controller_pinned_at_its_floor_answers_zero() -> None:
    s = ControllerSettings(window=2, step=2.0, updates=20, last=5)
    c = RateController(1.0, 1024.0, s)
    for _ in range(40):
        c.observe(5.0)  # always over
    assert c.rate == c.floor == 1024.0 / 2**12 and c.answer() == 0.0
    assert RateController(1.0, 8.0, s).answer() == 0.0  # no step taken yet


@pytest.mark.parametrize("cores, ms, target", [(1, 1.0, 5.0), (4, 2.0, 10.0)])
def test_the_controller_finds_the_known_rate_of_a_simulated_server(cores: int, ms: float,
                                                                   target: float) -> None:
    """Whole queries of a fixed service time on ``cores`` cores: the controller's answer lies
    within 15% of bisection's over fixed-rate runs, below saturation, and repeats exactly."""
    cpu = LatencyCurve((1, 1024), (ms, ms))
    sim = SimulatedServer(cpu, cores, sizes=QuerySizes.fixed(8), queries=2000, span_s=2.0)
    bisect, _ = max_qps(lambda q: sim.run(Policy(8), q), target, sim.capacity_hint(Policy(8)))
    qps, run = controlled_qps(sim, Policy(8), target)
    assert abs(qps - bisect) <= 0.15 * bisect, (qps, bisect)
    assert qps < 1e3 * cores / ms and run is not None and run.queries >= 2000
    assert controlled_qps(sim, Policy(8), target)[0] == qps
    # A target no single query meets: every window misses, so no rate.
    assert controlled_qps(sim, Policy(8), ms / 2) == (0.0, None)


def test_the_controller_cycles_when_a_window_is_short_against_the_queue() -> None:
    """16 fast cores at 30,000 QPS: a 64-query window lasts 2 ms, far less than an overload
    takes to show in the p95, so DeepRecSys's controller climbs past saturation and falls far below
    it again (a limit cycle) and its answer is well off bisection's. Longer windows settle."""
    cpu = LatencyCurve((1, 1024), (0.5, 0.5))
    sim = SimulatedServer(cpu, 16, sizes=QuerySizes.fixed(8), queries=2000, span_s=2.0)
    capacity = 16 / 0.5e-3
    bisect, _ = max_qps(lambda q: sim.run(Policy(8), q), 3.0, sim.capacity_hint(Policy(8)))
    c = RateController(3.0, capacity / 2)
    sim.run_controlled(Policy(8), c)
    last = c.rates[-c.settings.last:]
    assert max(last) > 1.2 * capacity and min(last) < 0.6 * capacity
    assert abs(c.answer() - bisect) > 0.15 * bisect
    settled, _ = controlled_qps(sim, Policy(8), 3.0, ControllerSettings(window=1024))
    assert abs(settled - bisect) <= 0.15 * bisect, (settled, bisect)


def test_a_controlled_run_is_the_simulators_queueing_at_the_rates_it_set() -> None:
    """Replaying the controlled run's arrivals through :func:`simulate` gives its latencies:
    the controller only chose the gaps."""
    cpu = LatencyCurve((1, 64, 1024), (0.5, 3.0, 20.0))
    sizes = QuerySizes.lognormal().sample(np.random.default_rng(0), 3000)
    s = ControllerSettings(window=16, updates=100, last=20)
    c = RateController(8.0, 400.0, s, seed=5)
    r = simulate_controlled(c, sizes, Policy(64), cpu, 4)
    assert c.done and r.queries >= s.queries and r.queries < sizes.size
    assert len(set(c.rates)) > 3  # the rate moved
    # Rebuild the arrivals from a controller told of the same completions: the latencies are
    # simulate's at those arrivals.
    c2 = RateController(8.0, 400.0, s, seed=5)
    times, t, pending = [], 0.0, []
    for i in range(r.queries):
        t += c2.gap_s()
        while pending and pending[0][0] <= t * 1e3:
            c2.observe(pending.pop(0)[1])
        times.append(t)
        end = t * 1e3 + r.latency_ms[i]
        pending.append((end, r.latency_ms[i]))
        pending.sort()
    replay = simulate(np.array(times), sizes[:r.queries], Policy(64), cpu, 4, warmup=0)
    assert np.allclose(replay.latency_ms, r.latency_ms)


def test_deeprecsched_with_the_controller_climbs_to_the_best_batch() -> None:
    points = tuple(2**k for k in range(11))
    cpu = LatencyCurve(points, tuple(0.1 + 0.2 * b for b in points))
    sim = SimulatedServer(cpu, cores=8, queries=600, sizes=QuerySizes.lognormal(), span_s=0.5)
    sizes = (1024, 256, 64, 16, 8)
    by_bisect = deeprecsched(sim, 20.0, batch_sizes=sizes)
    by_controller = deeprecsched(sim, 20.0, batch_sizes=sizes, controller=ControllerSettings())
    assert by_controller.policy == by_bisect.policy == Policy(16)
    base = static_baseline(sim, 20.0, policy=Policy(1024), controller=ControllerSettings())
    assert base.policy == Policy(1024) and by_controller.qps > 1.5 * base.qps


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4, unique=True),
       st.lists(st.floats(1.0, 3.0), min_size=4, max_size=4), st.floats(0.01, 2.0))
def test_curves_by_load_settle_where_a_runs_load_is_its_curves(
        loads: list[float], factors: list[float], work: float) -> None:
    """A run of ``work`` x the curve's 1-item median in utilization: the settled load is the
    lowest where the utilization on its curve equals the load, or an end load when none does
    inside; medians are linear in the load between profiled loads and clamp outside them."""
    loads = sorted(loads)
    base = LatencyCurve((1, 64), (1.0, 8.0), spread=((0.5, 1.5), (1.0, 1.0)))
    # Curves slower with load (factors sorted), as contention makes them.
    curves = tuple(base.scaled(f) for f in sorted(factors)[:len(loads)])
    c = CurvesByLoad(tuple(loads), curves)
    assert CurvesByLoad.from_dict(c.to_dict()) == c
    assert c(64) == curves[-1](64) and c.spread == base.spread
    assert c.at(loads[0] / 2) == curves[0] and c.at(1.0) == curves[-1]
    for a, b, x, y in zip(loads, loads[1:], curves, curves[1:]):
        mid = c.at((a + b) / 2)
        assert mid(1) == pytest.approx((x(1) + y(1)) / 2)
        assert mid(64) == pytest.approx((x(64) + y(64)) / 2)
    load, curve = c.settle(lambda cv: work * cv(1))
    assert curve == c.at(load)
    u = [work * cv(1) for cv in curves]
    if u[0] <= loads[0]:
        assert load == loads[0]
    elif all(ui > x for ui, x in zip(u, loads)):
        assert load == loads[-1]
    else:
        assert work * curve(1) == pytest.approx(load)  # the load the run puts on its curve
        # ... and no lower load settles: on every lower segment the utilization is above.
        grid = np.linspace(loads[0], load, 50)[:-1]
        assert all(work * c.at(x)(1) > x - 1e-9 for x in grid)


def test_a_simulated_run_takes_the_curve_of_the_load_it_puts_on_the_cores() -> None:
    """Light curve at 30% load, 1.5x slower at 90%: a slow stream is served at the light
    curve, a fast one at the heavy curve, one between at the settled curve; the latency-bounded
    QPS lies between the two single curves'."""
    light = LatencyCurve((1, 1024), (1.0, 1.0))
    c = CurvesByLoad((0.3, 0.9), (light, light.scaled(1.5)))
    sizes = QuerySizes.fixed(8)
    by_load, lo, hi = (SimulatedServer(k, cores=4, sizes=sizes, queries=3000, seed=2)
                       for k in (c, light, light.scaled(1.5)))
    policy = Policy(1024)  # whole queries: one 1 ms (light) sub-request each
    slow, fast = 400.0, 2000.0  # 10% and 50% of 4 cores at 1 ms (settles at 64%)
    assert np.array_equal(by_load.run(policy, slow).latency_ms, lo.run(policy, slow).latency_ms)
    assert np.array_equal(by_load.run(policy, 3500.0).latency_ms,
                          hi.run(policy, 3500.0).latency_ms)
    r = by_load.run(policy, fast)
    arrivals, _ = by_load.draw(fast)
    load, curve = c.settle(lambda cv: len(arrivals) * cv(8) / (4 * arrivals[-1] * 1e3))
    assert 0.3 < load < 0.9 and r.utilization == pytest.approx(load)
    assert np.array_equal(r.latency_ms, simulate(arrivals, np.full(len(arrivals), 8), policy,
                                                 curve, 4).latency_ms)
    qps = [max_qps(lambda q, k=k: k.run(policy, q), 3.0, 1000.0, 0.01)[0]
           for k in (lo, by_load, hi)]
    assert qps[2] < qps[1] < qps[0]
    # A controlled run has no one rate: it takes the highest load's curve.
    ctl = ControllerSettings(updates=20, last=10)
    a = simulate_controlled(RateController(3.0, 500.0, ctl), np.full(3000, 8), policy, c, 4)
    b = simulate_controlled(RateController(3.0, 500.0, ctl), np.full(3000, 8), policy,
                            light.scaled(1.5), 4)
    assert np.array_equal(a.latency_ms, b.latency_ms)


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
    (lambda: CurvesByLoad((0.5,), ()), "as many curves"),
    (lambda: CurvesByLoad((), ()), "as many curves"),
    (lambda: CurvesByLoad((0.9, 0.5), (FLAT, FLAT)), "increasing"),
    (lambda: CurvesByLoad((0.0, 0.5), (FLAT, FLAT)), "increasing"),
    (lambda: CurvesByLoad((0.5, 1.5), (FLAT, FLAT)), "increasing"),
    (lambda: CurvesByLoad((0.5, 0.9), (FLAT, LatencyCurve((1, 512), (2.0, 2.0)))), "share"),
    (lambda: CurvesByLoad((0.5, 0.9), (FLAT, LatencyCurve(FLAT.batches, FLAT.ms,
                                                              interpolation="log"))), "share"),
    (lambda: SimulatedServer(FLAT, cores=0), "core"),
    (lambda: simulate(np.zeros(2), np.ones(3, dtype=int), Policy(1), FLAT, 1), "one length"),
    (lambda: deeprecsched(_Known({}), 5.0, batch_sizes=()), "at least one batch size"),
    (lambda: ControllerSettings(window=1), "window"),
    (lambda: ControllerSettings(step=1.0), "above 1"),
    (lambda: ControllerSettings(stable=-0.1), "non-negative"),
    (lambda: ControllerSettings(updates=10, last=11), "last rates"),
    (lambda: ControllerSettings(process="diurnal"), "poisson"),
    (lambda: RateController(0.0, 10.0), "target"),
    (lambda: RateController(5.0, float("nan")), "starting rate"),
    (lambda: simulate_controlled(RateController(5.0, 1.0), np.ones((2, 2), dtype=int),
                                 Policy(1), FLAT, 1), "1-D"),
    (lambda: simulate_controlled(RateController(5.0, 1.0), np.ones(2, dtype=int),
                                 Policy(1, 4), FLAT, 1), "no accelerator"),
])
def test_bad_scheduling_input_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
