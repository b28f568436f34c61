"""Streams of batches: RankCaches warm across batches, hot entries profiled per batch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from recengine import _core
from recengine.nmp import NMPConfig, Trace, emulate
from recengine.nmp.dram import DramConfig
from recengine.nmp.study import NMPStudyConfig, run_study

ONE_RANK = DramConfig(channels=1, dimms_per_channel=1, ranks_per_dimm=1)


def _batch(rows: list[int], bag0: int = 0) -> Trace:
    n = len(rows)
    return Trace([10_000], np.zeros(n, np.int64), np.zeros(n, np.int64), np.asarray(rows),
                 bag0 + np.arange(n) // 8)


def test_a_stream_is_its_batches_back_to_back() -> None:
    s = Trace.from_model("rmc1", batch=16, batches=3, table_mb=8, seed=1)
    assert s.num_batches == 3 and len(s) == 3 * 16 * 8 * 80
    assert [len(s.batch(i)) for i in range(3)] == [len(s) // 3] * 3
    res = emulate(s)
    assert res.batch_latency_ns.shape == (3,)
    assert res.batch_latency_ns.sum() == pytest.approx(res.latency_ns)
    assert res.batch_energy_nj.sum() == pytest.approx(res.energy_nj)
    # The first batch alone starts as cold as the stream's first batch: the same figures.
    first = emulate(s.batch(0))
    assert first.latency_ns == pytest.approx(res.batch_latency_ns[0])
    # Later batches find the RankCaches warm.
    assert res.batch_cache_hit_rate[-1] > res.batch_cache_hit_rate[0]
    assert res.batch_cache_hit_rate[-1] > emulate(s.batch(2)).cache_hit_rate
    # One draw for the stream: the hottest rows are the same in every batch.
    hot = [np.bincount(s.batch(i).rows[s.batch(i).tables == 0]).argmax() for i in range(3)]
    assert len(set(hot)) == 1


def test_a_batch_repeated_hits_every_time_when_every_vector_may_be_cached() -> None:
    rows = [i * 97 for i in range(64)]
    s = Trace.stream([_batch(rows), _batch(rows, 8)])
    assert s.starts.tolist() == [0, 64]
    cfg = NMPConfig(dram=ONE_RANK, hot_threshold=0)
    hits = emulate(s, cfg).raw["batch_cache_hits"]
    assert hits == [0, 64]


def test_hot_entries_are_profiled_per_batch() -> None:
    """Each row once per batch: never hot within a batch, so nothing is cached; profiled over
    the two batches as one, every row is hot and the second pass hits."""
    rows = [i * 97 for i in range(64)]
    s = Trace.stream([_batch(rows), _batch(rows, 8)])
    cfg = NMPConfig(dram=ONE_RANK, hot_threshold=2)
    assert emulate(s, cfg).raw["cache_hits"] == 0
    whole = replace(s, starts=None)
    assert emulate(whole, cfg).raw["cache_hits"] == 64


def test_take_keeps_the_batches() -> None:
    s = Trace.from_model("ncf", batch=8, batches=3, table_mb=2)
    small = s.take(s.bags % 8 < 2)
    assert small.num_batches == 3
    assert [len(small.batch(i)) for i in range(3)] == [len(small) // 3] * 3
    with pytest.raises(ValueError, match="bool array"):
        s.take(np.ones(3, bool))


def test_streams_round_trip_through_files(tmp_path: Path) -> None:
    s = Trace.from_model("ncf", batch=4, batches=2, table_mb=2)
    s.save(tmp_path / "s.npz")
    back = Trace.load(tmp_path / "s.npz")
    assert back.starts.tolist() == s.starts.tolist()
    assert emulate(back).raw == emulate(s).raw
    text = tmp_path / "s.csv"
    text.write_text("batch,table,row\n0,0,5\n0,0,6\n1,0,5\n3,0,7\n")
    t = Trace.load(text)
    assert t.starts.tolist() == [0, 2, 3] and len(t) == 4
    bad = tmp_path / "bad.csv"
    bad.write_text("batch,table,row\n1,0,5\n0,0,6\n")
    with pytest.raises(ValueError, match="never decrease"):
        Trace.load(bad)


@pytest.mark.parametrize("starts", [[], [1], [0, 3, 2], [0, 99], [[0]], [0.0]])
def test_bad_batch_starts_are_refused(starts: list[int]) -> None:
    b = _batch([1, 2, 3, 4])
    with pytest.raises(ValueError, match="starts"):
        Trace(b.table_rows, b.models, b.tables, b.rows, b.bags, np.asarray(starts))


def test_the_core_checks_batch_starts_too() -> None:
    b = _batch([1, 2, 3])
    cols = (b.models, b.tables, b.rows, b.bags)
    for starts in ([1], [0, 2, 1], [0, 9]):
        with pytest.raises(ValueError, match="batch"):
            _core.nmp_emulate([10_000], *cols, None, False, starts)
    with pytest.raises(ValueError, match="one batch"):
        _core.nmp_emulate([10_000], *cols, {"fast": False}, True, [0, 1])


def test_command_streams_are_for_one_batch() -> None:
    s = Trace.stream([_batch([1, 2]), _batch([3, 4])])
    cfg = NMPConfig(timing="command")
    with pytest.raises(ValueError, match="one batch"):
        emulate(s, cfg, commands=True)
    assert len(emulate(s.batch(1), cfg, commands=True).commands) > 0


def test_the_study_reports_cold_and_warm_caches() -> None:
    rows = run_study(NMPStudyConfig(model="rmc1", batch=8, batches=3, table_mb=8,
                                    sweeps=("cache", "sls_fraction")))
    for r in rows:
        assert r["batches"] == 3
        if r.get("cache_kb") != 0:
            assert r["warm_hit_rate"] > r["cold_hit_rate"] > 0
    f = [r for r in rows if r["sweep"] == "sls_fraction"]
    assert len({r["latency_speedup"] for r in f}) == 1
    tput = [r["throughput_speedup"] for r in f]
    assert tput == sorted(tput)
    with pytest.raises(ValueError, match="batches"):
        NMPStudyConfig(batches=0)
