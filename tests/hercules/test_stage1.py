"""Hercules' first stage: schedules, CPU profiles with contention, the evaluator on the
serving simulator, and the search against the grid, DeepRecSched and the naive schedule."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from recengine.hercules import (
    CpuProfile,
    Evaluator,
    Footprint,
    Machine,
    Schedule,
    ServerType,
    compare,
    counts,
    footprint,
    naive,
    profile_cpu,
    sparse_shares,
)
from recengine.sched import LatencyCurve

BATCHES = (1, 32, 128, 1024)
#: One core's sub-request time: a fixed cost and a per-item cost (ms).
ONE = LatencyCurve(BATCHES, tuple(0.05 + 0.01 * b for b in BATCHES))


def synthetic(cores: int, speedup: float = 0.6, contention: float = 0.03,
              interpreter: float = 0.1) -> CpuProfile:
    """A profile where ``t`` threads run an instance ``t ** speedup`` times faster, each busy
    core slows every core by ``contention``, and thread workers slow by ``interpreter`` more
    per concurrent forward."""
    ks = counts(cores)
    return CpuProfile("m", cores, ks, tuple(ONE.scaled(1 / t ** speedup) for t in ks), ks,
                      tuple(ONE.scaled(1 + contention * (k - 1)) for k in ks),
                      tuple(ONE.scaled((1 + contention * (k - 1)) * (1 + interpreter * (k - 1)))
                            for k in ks), Footprint(8 * 2**30, 2**20))


def machine(cores: int, **kw: object) -> Machine:
    return Machine(ServerType("cpu", 100, 300, cores=cores), synthetic(cores), **kw)  # type: ignore[arg-type]


def test_a_schedule_checks_itself_and_counts_its_cores_and_copies() -> None:
    s = Schedule(4, 2, 64, sharing="processes")
    assert (s.cores, s.copies, s.policy().batch_size) == (8, 4, 64)
    assert Schedule(4, 2, 64).copies == 1
    assert Schedule.from_dict(s.to_dict()) == s
    assert naive(8, 300) == Schedule(1, 8, 300)
    assert Schedule(1, 1, 8, dense="gpu").describe() == ("1 x 1 threads, batch 8, cpu sparse, "
                                                         "gpu dense, threads")
    for bad in (dict(instances=0), dict(threads=0), dict(sparse="gpu"), dict(sharing="fork"),
                dict(batch_size=0), dict(offload_threshold=0), dict(dense="nmp"),
                dict(sparse="nmp", dense="gpu")):
        with pytest.raises(ValueError):
            Schedule(**{"instances": 1, "threads": 1, "batch_size": 8, **bad})  # type: ignore[arg-type]


def test_threads_share_one_copy_of_the_tables_and_processes_hold_one_each() -> None:
    import recengine.models as rm

    f = footprint(rm.build("ncf", scale=0.01))
    assert f.table_bytes > f.dense_bytes > 0
    assert f.of(Schedule(8, 1, 64)) == f.table_bytes + f.dense_bytes
    assert f.of(Schedule(8, 1, 64, sharing="processes")) == 8 * f.of(Schedule(8, 1, 64))
    assert f.scaled(10).table_bytes == 10 * f.table_bytes


def test_profiled_counts() -> None:
    assert counts(16) == (1, 2, 4, 8, 16)
    assert counts(6) == (1, 2, 4, 6)
    with pytest.raises(ValueError):
        counts(0)


def test_a_profile_gives_each_profiled_point_its_own_curve() -> None:
    p = synthetic(8)
    for k, shared, procs in zip(p.busy, p.shared, p.processes):
        assert p.curve(k, 1, "threads").ms == pytest.approx(shared.ms)
        assert p.curve(k, 1, "processes").ms == pytest.approx(procs.ms)
    for t, alone in zip(p.threads, p.alone):
        # One instance of t threads keeps t cores busy: their contention on top.
        assert p.curve(1, t, "processes").ms == pytest.approx(
            [m * (1 + 0.03 * (t - 1)) for m in alone.ms])
    # Between profiled counts, linear in the busy cores.
    assert p.curve(3, 1, "processes").ms == pytest.approx(ONE.scaled(1.06).ms)
    assert CpuProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_a_profile_splits_its_curves_by_the_measured_sparse_shares() -> None:
    p = replace(synthetic(4), sparse_share=(0.5, 0.25, 0.1, 0.0))
    lookups, dense = p.split(p.curve(2, 2))
    assert lookups.ms == pytest.approx([m * f for m, f in zip(p.curve(2, 2).ms,
                                                               p.sparse_share)], abs=1e-6)
    assert [a + b for a, b in zip(lookups.ms, dense.ms)] == pytest.approx(p.curve(2, 2).ms)
    assert min(lookups.ms) > 0  # a part that takes nothing is still a curve
    assert CpuProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError, match="no sparse shares"):
        synthetic(4).split(ONE)
    for bad in ((0.5,), (0.1, 0.2, 0.3, 1.5)):
        with pytest.raises(ValueError, match="sparse shares"):
            replace(synthetic(4), sparse_share=bad)


def test_sparse_shares_are_measured_on_the_model() -> None:
    import recengine.models as rm

    # rmc1's lookups are a large share of its forward; wnd's a small one (its MLP is wide).
    rmc1 = sparse_shares(rm.build("rmc1", scale=0.01), batches=(64,), repeat=3)[0]
    wnd = sparse_shares(rm.build("wnd", scale=0.01), batches=(64,), repeat=3)[0]
    assert 0 < wnd < rmc1 <= 1


def test_a_profile_refuses_what_it_cannot_answer() -> None:
    p = synthetic(8)
    with pytest.raises(ValueError, match="not profiled"):
        p.curve(1, 3)
    with pytest.raises(ValueError, match="do not fit"):
        p.curve(5, 2)
    with pytest.raises(ValueError, match="sharing"):
        p.curve(1, 1, "fork")
    with pytest.raises(ValueError, match="one instance of one thread"):
        CpuProfile("m", 4, (2,), (ONE,), (1,), (ONE,), (ONE,))
    with pytest.raises(ValueError, match="batch sizes"):
        CpuProfile("m", 4, (1,), (ONE,), (1,), (LatencyCurve((1, 8), (1.0, 2.0)),), (ONE,))
    with pytest.raises(ValueError, match="increase"):
        CpuProfile("m", 4, (1, 8), (ONE, ONE), (1,), (ONE,), (ONE,))


def test_the_space_keeps_to_the_cores_and_the_memory() -> None:
    m = Machine(ServerType("cpu", 100, 300, cores=4, memory_gb=20), synthetic(4))
    ev = Evaluator(m, 10.0, batch_sizes=(32, 1024), queries=200)
    points = [ev.schedule(ev.space().point(i)) for i in ev.space().indices()]
    assert points and all(s.cores <= 4 for s in points)
    # 8 GiB of tables: two processes fit in 20 GB, three do not; threads share one copy.
    assert max(s.instances for s in points if s.sharing == "processes") == 2
    assert max(s.instances for s in points if s.sharing == "threads") == 4
    assert set(ev.space().dims) == {"instances", "threads", "batch_size", "sharing"}


def test_throughput_grows_with_instances_and_schedules_that_run_alike_run_once() -> None:
    ev = Evaluator(machine(4), 10.0, batch_sizes=(32, 1024), queries=200)
    one = ev.qps(Schedule(1, 1, 32, sharing="processes"))
    four = ev.qps(Schedule(4, 1, 32, sharing="processes"))
    assert four > 2.5 * one
    # Thread workers pay the interpreter lock; processes do not.
    assert ev.qps(Schedule(4, 1, 32)) < four
    runs = ev.runs
    assert ev.qps(Schedule(4, 1, 4096, sharing="processes")) == ev.qps(
        Schedule(4, 1, 1024, sharing="processes"))  # both run every query whole
    assert ev.runs == runs + 1
    with pytest.raises(ValueError, match="no accelerator"):
        ev.qps(Schedule(1, 1, 32, offload_threshold=64))
    with pytest.raises(ValueError, match="no RecNMP"):
        ev.qps(Schedule(1, 1, 32, sparse="nmp"))


def test_offloading_and_recnmp_enter_the_space_when_the_server_has_them() -> None:
    from recengine.nmp import SLSCurve

    gpu = LatencyCurve((1, 1024), (0.5, 1.0), interpolation="log")
    nmp = SLSCurve("m", "recnmp", (1, 1024), (0.2, 20.0), (1.0, 100.0))
    ev = Evaluator(machine(2, accelerator=gpu, nmp=nmp), 10.0, batch_sizes=(32,),
                   thresholds=(64, 128), queries=200)
    dims = ev.space().dims
    assert dims["offload_threshold"] == (64, 128, None) and dims["sparse"] == ("cpu", "nmp")
    cpu = ev.qps(Schedule(2, 1, 32, sharing="processes"))
    # RecNMP runs the 79% of a sub-request in SLS five times faster.
    assert ev.qps(Schedule(2, 1, 32, sparse="nmp", sharing="processes")) > 1.5 * cpu
    assert ev.qps(Schedule(2, 1, 32, offload_threshold=64, sharing="processes")) > cpu


def test_the_dense_part_on_the_gpu_enters_the_space_and_the_gpu_is_shared() -> None:
    # Lookups are a fifth of a sub-request; the GPU runs the dense part in 0.05 ms, and the
    # instance waits for it.
    p = replace(synthetic(4), sparse_share=(0.2,) * len(BATCHES))
    dense = LatencyCurve((1, 1024), (0.05, 0.05), interpolation="log")
    gpu = LatencyCurve((1, 1024), (2.0, 3.0), interpolation="log")
    m = Machine(ServerType("gpu", 100, 300, cores=4), p, accelerator=gpu,
                dense_accelerator=dense)
    ev = Evaluator(m, 20.0, batch_sizes=(32, 1024), thresholds=(1 << 20,), queries=300)
    assert ev.space().dims["dense"] == ("cpu", "gpu")
    on_cpu = ev.qps(Schedule(1, 1, 32, sharing="processes"))
    on_gpu = ev.qps(Schedule(1, 1, 32, sharing="processes", dense="gpu"))
    assert on_gpu > 2 * on_cpu
    # One GPU for every instance: four instances gain less than four times.
    four = ev.qps(Schedule(4, 1, 32, sharing="processes", dense="gpu"))
    assert on_gpu < four < 3.5 * on_gpu
    curve, stage = ev.service(Schedule(2, 1, 32, dense="gpu"))
    assert stage is not None and stage.accelerator and not stage.first
    assert curve.ms == pytest.approx(p.curve(2, 1).scaled(0.2).ms)
    # Without measured shares (or a dense curve) the dimension is left out.
    assert "dense" not in Evaluator(replace(m, cpu=synthetic(4)), 20.0, queries=300).space().dims
    with pytest.raises(ValueError, match="no GPU"):
        Evaluator(machine(4), 20.0, queries=300).qps(Schedule(1, 1, 32, dense="gpu"))


def test_recnmp_is_one_device_the_instances_queue_for() -> None:
    from recengine.nmp import SLSCurve

    # RecNMP runs lookups 5x faster than the host; the lookups are 90% of a sub-request.
    nmp = SLSCurve("m", "recnmp", (1, 1024), (0.2, 20.0), (1.0, 100.0))
    p = replace(synthetic(4, contention=0.0, interpreter=0.0), sparse_share=(0.9,) * 4)
    ev = Evaluator(Machine(ServerType("nmp", 100, 300, cores=4), p, nmp=nmp), 20.0,
                   batch_sizes=(32,), queries=400)
    curve, stage = ev.service(Schedule(4, 1, 32, sparse="nmp", sharing="processes"))
    assert stage is not None and stage.first
    assert curve.ms == pytest.approx(p.curve(4, 1).scaled(0.1).ms)  # the dense part
    # The machine's lookup throughput at its busiest (4 cores), five times over.
    assert stage.curve.ms == pytest.approx(p.curve(4, 1).scaled(0.9 * 0.2 / 4).ms)
    one = ev.qps(Schedule(1, 1, 32, sparse="nmp", sharing="processes"))
    four = ev.qps(Schedule(4, 1, 32, sparse="nmp", sharing="processes"))
    cpu4 = ev.qps(Schedule(4, 1, 32, sharing="processes"))
    assert one < four and four > 2 * cpu4
    # A RecNMP that only matches the host's memory system gains no throughput (four
    # instances queue for it one sub-request at a time; each one's lookups end sooner).
    slow = SLSCurve("m", "recnmp", (1, 1024), (1.0, 100.0), (1.0, 100.0))
    ev = Evaluator(Machine(ServerType("nmp", 100, 300, cores=4), p, nmp=slow), 20.0,
                   batch_sizes=(32,), queries=400)
    assert 0.9 * cpu4 < ev.qps(Schedule(4, 1, 32, sparse="nmp", sharing="processes")) \
        < 1.25 * cpu4 < four


@pytest.mark.parametrize("cores,speedup", [(8, 0.6), (16, 0.9)])
def test_the_search_lands_within_2pct_of_the_grid_with_at_most_15pct_of_its_runs(
        cores: int, speedup: float) -> None:
    gpu = LatencyCurve((1, 1024), (2.0, 3.0), interpolation="log")
    ev = Evaluator(Machine(ServerType("gpu", 100, 300, cores=cores), synthetic(cores, speedup),
                           accelerator=gpu), 10.0, batch_sizes=(32, 64, 128, 1024),
                   thresholds=(1, 128, 192, 256), queries=200)
    c = compare(ev)
    assert c.grid is not None and c.gap is not None
    assert c.gap <= 0.02
    assert c.search.evaluations <= 0.15 * c.grid.evaluations
    # The naive schedule (one instance of every core, whole queries) is far behind, and
    # DeepRecSched (a single-thread instance per core) is no better than the optimum.
    assert c.search.value > 1.2 * c.naive_qps
    assert c.deeprecsched_qps <= c.grid.value * 1.005
    assert c.naive == Schedule(1, cores, ev.largest)


def test_a_model_is_profiled_through_the_real_server() -> None:
    import recengine.models as rm

    p = profile_cpu(rm.build("ncf", scale=0.01), 2, batches=(1, 16), span_s=0.0,
                    processes=False)
    assert p.threads == p.busy == (1, 2) and p.cores == 2
    assert p.shared[0] is p.alone[0] and p.processes == p.shared
    assert p.footprint.table_bytes > 0
    assert all(m > 0 for c in (*p.alone, *p.shared) for m in c.ms)


def test_a_worker_process_is_measured_for_the_footprint() -> None:
    import recengine.models as rm

    p = profile_cpu(rm.build("ncf", scale=0.01), 1, batches=(1, 16), span_s=0.0)
    # A process of its own: an interpreter and torch, hundreds of MB besides the model.
    assert p.footprint.process_bytes > 50 * 2**20
    s = Schedule(1, 1, 16, sharing="processes")
    assert p.footprint.of(s) == (p.footprint.table_bytes + p.footprint.dense_bytes
                                 + p.footprint.process_bytes)
    assert CpuProfile.from_dict(p.to_dict()).footprint == p.footprint
