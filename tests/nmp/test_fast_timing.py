"""The fast DRAM timing mode against the command model, and the presets it runs on."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.nmp import DramConfig, NMPConfig, Trace, emulate, study


def both(trace: Trace, cfg: NMPConfig) -> tuple[dict, dict]:
    """The command model's and the fast mode's counters for ``trace`` on ``cfg``."""
    return (emulate(trace, replace(cfg, timing="command")).raw,
            emulate(trace, replace(cfg, timing="fast")).raw)


def test_fast_timing_is_within_3_percent_on_every_row_of_the_study_sweep() -> None:
    """Every setting of the study's sweep (streams of 2 batches, so the caches carry over),
    host and RecNMP: the same reads and cache hits, cycles and energy within 3%."""
    config = study.NMPStudyConfig(model="rmc1", batch=16, batches=2, table_mb=32)
    seen = set()
    cases = list(study._cases(config))
    for case in cases:
        trace = study._trace(config, case)
        for cfg in (case.nmp.host(), case.nmp):
            key = (case.model, case.zipf, case.models, repr(cfg))
            if key in seen:
                continue
            seen.add(key)
            exact, fast = both(trace, cfg)
            for k in ("cache_hits", "cache_accesses", "dram_reads", "lookups",
                      "batch_cache_hits"):
                assert fast[k] == exact[k], (case.sweep, case.params, k)
            for k in ("cycles", "energy_pj"):
                ratio = fast[k] / exact[k]
                assert abs(ratio - 1) < 0.03, (case.sweep, case.params, cfg.nmp, k, ratio)
    assert len(cases) == 43 and len(seen) > 40


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1000, 200_000), min_size=1, max_size=4), st.integers(20, 60),
       st.integers(40, 80), st.sampled_from([0.0, 0.8, 1.2]),
       st.sampled_from([(1, 1), (1, 2), (2, 2), (4, 2)]), st.sampled_from([1, 2, 4]),
       st.booleans(), st.sampled_from([0, 8192, 131072]), st.integers(0, 2**31 - 1))
def test_fast_timing_tracks_the_command_model_on_sls_traces(
        tables: list[int], bags: int, pooling: int, zipf: float, dimms: tuple[int, int],
        channels: int, nmp: bool, cache: int, seed: int) -> None:
    """Batches of SLS lookups (1,000-5,000 vectors of 128 bytes) on any rank count, channel
    count, cache and placement: the same reads and cache hits, cycles within 5% (the study's
    rows, above, within 3%)."""
    trace = Trace.synthetic(tables, bags=bags, pooling=pooling, zipf=zipf, seed=seed)
    dram = DramConfig(channels=channels, dimms_per_channel=dimms[0], ranks_per_dimm=dimms[1])
    exact, fast = both(trace, NMPConfig(nmp=nmp, dram=dram, cache_bytes=cache))
    assert (fast["dram_reads"], fast["cache_hits"]) == (exact["dram_reads"], exact["cache_hits"])
    assert abs(fast["cycles"] / exact["cycles"] - 1) < 0.05


@pytest.mark.parametrize("queue,vector", [(1, 64), (1, 256), (4, 256), (64, 512)])
def test_fast_timing_handles_queues_shorter_than_a_vector(queue: int, vector: int) -> None:
    """A vector of more lines than the controller queue holds: the same reads, and a schedule
    of about the same length (these shapes, off the study's, stay within 20%)."""
    trace = Trace.synthetic([50_000, 3000], bags=20, pooling=30, seed=3)
    cfg = NMPConfig(nmp=False, dram=DramConfig(channels=1, queue_depth=queue),
                    vector_bytes=vector, cache_bytes=0)
    exact, fast = both(trace, cfg)
    assert fast["dram_reads"] == exact["dram_reads"] == len(trace) * (vector // 64)
    assert abs(fast["cycles"] / exact["cycles"] - 1) < 0.2


def test_the_presets_are_the_papers_memory_system_and_the_smaller_one() -> None:
    paper, small = NMPConfig.preset("recnmp"), NMPConfig.preset("recnmp-2x2")
    assert (paper.dram.channels, paper.dram.dimms_per_channel, paper.dram.ranks_per_dimm) \
        == (4, 4, 2)
    assert (small.dram.dimms_per_channel, small.dram.ranks_per_dimm) == (2, 2)
    assert paper.cache_bytes == 128 * 1024 and paper.nmp and paper.table_aware
    host = NMPConfig.preset("ddr4-baseline")
    assert host.dram == paper.dram and not host.nmp and host.cache_bytes == 0
    assert paper.host() == host and small.host() == NMPConfig.preset("ddr4-baseline-2x2")
    assert NMPConfig.preset("ddr4-baseline-2x2").dram == small.dram
    assert NMPConfig().timing == "fast"
    # Eight ranks a channel work in parallel: RecNMP's latency drops below the smaller one's.
    trace = Trace.synthetic([100_000] * 4, bags=32, pooling=40, seed=1)
    assert emulate(trace, paper).latency_ns < emulate(trace, small).latency_ns


def test_command_streams_and_unknown_timings_are_refused_clearly() -> None:
    trace = Trace.synthetic([1000], bags=2, pooling=4, seed=0)
    with pytest.raises(ValueError, match="command model"):
        emulate(trace, NMPConfig(), commands=True)
    assert emulate(trace, NMPConfig(timing="command"), commands=True).commands
    with pytest.raises(ValueError, match="unknown timing 'exact'"):
        NMPConfig(timing="exact")
    with pytest.raises(ValueError, match="unknown preset"):
        NMPConfig.preset("recnmp-8x8")
    with pytest.raises(ValueError, match="unknown system"):
        study.NMPStudyConfig(system="hbm")
    with pytest.raises(ValueError, match="unknown timing"):
        study.NMPStudyConfig(timing="slow")


def test_study_rows_say_which_system_and_timing_ran() -> None:
    rows = study.run_study(study.NMPStudyConfig(model="ncf", batch=4, table_mb=4,
                                                sweeps=("ranks",), system="recnmp-2x2",
                                                timing="command"))
    assert {(r["system"], r["timing"]) for r in rows} == {("recnmp-2x2", "command")}
