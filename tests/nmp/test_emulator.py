"""The RecNMP emulation: bytes read, caches, ranks, thread counts, NMPDevice, bad configs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import recengine
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.nmp import (
    DramConfig,
    NMPConfig,
    NMPDevice,
    Trace,
    emulate,
    rank_dram_config,
    validate,
)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([64, 128, 256]), st.booleans(), st.integers(1, 40),
       st.integers(0, 2**31 - 1))
def test_without_a_cache_every_vector_is_read_once(vector_bytes: int, nmp: bool, bags: int,
                                                   seed: int) -> None:
    trace = Trace.synthetic([5000, 300], bags=bags, pooling=7, seed=seed)
    cfg = NMPConfig(nmp=nmp, vector_bytes=vector_bytes, cache_bytes=0, hot_threshold=0)
    r = emulate(trace, cfg).raw
    assert r["dram_reads"] * 64 == len(trace) * vector_bytes
    assert r["cache_accesses"] == 0 and r["cycles"] > 0 and r["energy_pj"] > 0


def test_a_cache_that_always_hits_reads_only_cold_misses() -> None:
    rows = np.tile(np.arange(4), 500)  # 4 rows, again and again
    trace = Trace.from_lookups([1000], [rows], [np.full(100, 20)])
    r = emulate(trace, NMPConfig(hot_threshold=0)).raw
    assert r["cache_hits"] == len(trace) - 4
    assert r["dram_reads"] == 4 * 2  # one cold miss per row, 2 lines of 128 bytes each
    no_cache = emulate(trace, NMPConfig(cache_bytes=0, hot_threshold=0)).raw
    assert no_cache["dram_reads"] == len(trace) * 2 and r["cycles"] < no_cache["cycles"]


def test_hot_entry_profiling_caches_only_hot_rows() -> None:
    hot = np.repeat(np.arange(8), 10)
    cold = np.arange(1000, 1100)
    trace = Trace.from_lookups([5000], [np.concatenate([hot, cold])], [np.array([180])])
    profiled = emulate(trace, NMPConfig(hot_threshold=2)).raw
    assert profiled["cache_hits"] == len(hot) - 8


def test_more_ranks_are_never_slower_on_uniform_traffic() -> None:
    trace = Trace.synthetic([1_000_000] * 4, bags=128, pooling=20, seed=3)
    cycles = [emulate(trace, NMPConfig(dram=DramConfig(channels=1, dimms_per_channel=d),
                                       cache_bytes=0, hot_threshold=0)).raw["cycles"]
              for d in (1, 2, 4)]
    assert cycles[0] >= cycles[1] >= cycles[2]


def test_nmp_beats_the_host_and_results_ignore_the_thread_count() -> None:
    trace = Trace.synthetic([1_000_000] * 4, bags=64, pooling=40, zipf=0.5, seed=4)
    before = recengine.get_num_threads()
    try:
        recengine.set_num_threads(1)
        one = [emulate(trace, NMPConfig.preset(p)).raw for p in ("ddr4-baseline", "recnmp")]
        recengine.set_num_threads(2)
        two = [emulate(trace, NMPConfig.preset(p)).raw for p in ("ddr4-baseline", "recnmp")]
    finally:
        recengine.set_num_threads(before)
    assert one == two
    host, nmp = one
    assert nmp["cycles"] < host["cycles"] and nmp["channel_bytes"] < host["channel_bytes"]


def test_the_device_pools_as_the_cpu_kernel() -> None:
    table = recengine.EmbeddingTable.random(2000, 32, dtype="int8")
    idx = np.random.default_rng(5).integers(0, 2000, 90)
    lens = np.array([30, 0, 60])
    dev = NMPDevice()
    for mode in ("sum", "mean", "max"):
        np.testing.assert_array_equal(dev.lookup(table, idx, lens, mode=mode),
                                      table.lookup(idx, lengths=lens, mode=mode))
    assert dev.calls == 3 and dev.elapsed_ns > 0 and dev.energy_nj > 0


def test_memory_technologies_change_the_cache_energy() -> None:
    trace = Trace.synthetic([10_000] * 2, bags=32, pooling=20, zipf=1.0, seed=6)
    sram = emulate(trace, NMPConfig(cache_technology="sram")).raw
    pcm = emulate(trace, NMPConfig(cache_technology="pcm-pessimistic")).raw
    assert pcm["energy_pj"] > sram["energy_pj"] and pcm["cycles"] == sram["cycles"]


def test_bad_configs_and_traces() -> None:
    trace = Trace.synthetic([100], bags=2, pooling=2)
    with pytest.raises(ValueError, match="ranks_per_dimm"):
        emulate(trace, NMPConfig(dram=DramConfig(ranks_per_dimm=0)))
    with pytest.raises(ValueError, match="larger than this model allows"):
        emulate(trace, NMPConfig(cache_bytes=64 << 20))
    with pytest.raises(ValueError, match="unknown memory technology"):
        NMPConfig(cache_technology="core-memory")
    with pytest.raises(ValueError, match="unknown preset"):
        NMPConfig.preset("hbm")
    with pytest.raises(ValueError, match="vector_bytes"):
        emulate(trace, NMPConfig(vector_bytes=0))
    bad = replace(trace, rows=trace.rows + 100)
    with pytest.raises(IndexError):
        emulate(bad)
    with pytest.raises(ValueError, match="lengths sum"):
        Trace.from_lookups([10], [np.arange(3)], [np.array([2])])
    zeros = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="address space"):
        emulate(Trace([2**62], zeros, zeros, zeros, zeros))


def test_the_study_and_its_command_line(tmp_path: object, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    import json
    from pathlib import Path

    from recengine.cli import main
    from recengine.nmp.study import NMPStudyConfig, run_study

    rows = run_study(NMPStudyConfig(model="rmc1", batch=8, batches=2, table_mb=8,
                                    sweeps=("ranks", "cache")))
    ranks = [r for r in rows if r["sweep"] == "ranks"]
    assert [r["ranks"] for r in ranks] == [1, 2, 4, 8]
    nmp_us = [r["nmp_latency_us"] for r in ranks]
    # Rank-level parallelism: never slower on a batch whose reads outweigh its results.
    assert nmp_us == sorted(nmp_us, reverse=True)
    for r in rows:
        assert r["throughput_speedup"] <= r["latency_speedup"] or r["latency_speedup"] < 1
        assert -1 < r["energy_saving"] < 1
    no_cache = next(r for r in rows if r.get("cache_kb") == 0)
    assert no_cache["cache_hit_rate"] == 0
    plot = Path(str(tmp_path)) / "nmp.png"
    assert main(["nmp", "--model", "ncf", "--batch", "8", "--table-mb", "4", "--sweeps",
                 "locality", "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    for r in out:
        for key in ("config", "latency_speedup", "throughput_speedup", "energy_saving"):
            assert key in r
    assert plot.stat().st_size > 0
    assert main(["nmp", "--model", "ncf", "--batch", "4", "--table-mb", "2", "--preset",
                 "recnmp", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    with pytest.raises(SystemExit):
        main(["nmp", "--sweeps", "voltage"])
    trace = Path(str(tmp_path)) / "trace.csv"
    trace.write_text("table,row,bag\n" + "".join(f"{i % 3},{i * 37 % 5000},{i // 20}\n"
                                                  for i in range(400)))
    assert main(["nmp", "--trace", str(trace), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert {r["sweep"] for r in from_file} == {"ranks", "cache", "scheduling", "profiling",
                                               "vector", "energy", "sls_fraction"}
    assert all(r["lookups"] == 400 for r in from_file)
    assert main(["nmp", "--model", "ncf", "--batch", "4", "--table-mb", "2", "--preset",
                 "recnmp", "--distribution", "production", "--json"]) == 0
    capsys.readouterr()
    assert main(["nmp", "--trace", str(trace) + ".missing"]) == 1
    assert "No such file" in capsys.readouterr().err


@settings(max_examples=15, deadline=None)
@given(st.booleans(), st.sampled_from([0, 8 * 1024]), st.sampled_from([1, 2]),
       st.integers(0, 2**31 - 1))
def test_every_rank_and_channel_command_stream_meets_the_timing(nmp: bool, cache: int,
                                                                 ranks: int, seed: int) -> None:
    trace = Trace.synthetic([20_000, 3000], bags=6, pooling=15, zipf=0.8, seed=seed)
    dram = DramConfig(channels=2, ranks_per_dimm=ranks)
    cfg = NMPConfig(nmp=nmp, dram=dram, cache_bytes=cache, timing="command")
    res = emulate(trace, cfg, commands=True)
    assert len(res.commands) == (2 * 2 * ranks if nmp else 2)
    check = rank_dram_config(cfg) if nmp else dram
    for stream in res.commands:
        validate(stream, check)
    reads = sum(int((s[:, 1] == 1).sum()) for s in res.commands)
    acts = sum(int((s[:, 1] == 0).sum()) for s in res.commands)
    assert reads == res.raw["dram_reads"] and acts == res.raw["activates"]
    assert emulate(trace, cfg).raw == res.raw


def test_a_broken_rank_stream_fails_the_validator() -> None:
    trace = Trace.synthetic([50_000], bags=4, pooling=30, seed=2)
    cfg = NMPConfig(cache_bytes=0, timing="command")
    stream = next(s for s in emulate(trace, cfg, commands=True).commands if len(s) > 4)
    validate(stream, rank_dram_config(cfg))
    early = stream.copy()
    rd = int(np.flatnonzero(early[:, 1] == 1)[0])
    early[rd, 0] = early[rd - 1, 0] + 1 if rd else 0  # a read right after its ACT (tRCD)
    with pytest.raises(ValueError):
        validate(early[np.argsort(early[:, 0], kind="stable")], rank_dram_config(cfg))


def test_traces_from_models_and_files(tmp_path: Path) -> None:
    t = Trace.from_model("rmc1", batch=4, table_mb=8)
    assert len(t.table_rows) == 8 and len(t) == 4 * 8 * 80
    assert set(np.unique(t.bags)) == set(range(4))
    prod = Trace.from_model("ncf", batch=8, distribution="production")
    assert prod.table_rows[0] > 100_000 and len(prod) == 8 * 4
    t.save(tmp_path / "t.npz")
    back = Trace.load(tmp_path / "t.npz")
    assert back.table_rows == t.table_rows
    for a, b in zip((back.models, back.tables, back.rows, back.bags),
                    (t.models, t.tables, t.rows, t.bags)):
        np.testing.assert_array_equal(a, b)
    assert emulate(back).raw == emulate(t).raw
    csv = tmp_path / "t.csv"
    csv.write_text("table,row,bag\n0,5,0\n1,7,0\n0,9,1\n")
    c = Trace.load(csv)
    assert c.table_rows == [10, 8] and list(c.rows) == [5, 7, 9] and list(c.models) == [0] * 3
    assert Trace.load(csv, table_rows=[100, 100]).table_rows == [100, 100]
    txt = tmp_path / "t.txt"
    txt.write_text("row table\n3 0\n")
    assert list(Trace.load(txt).rows) == [3]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="'table' and 'row'"):
        Trace.load(tmp_path / "bad.csv")
    (tmp_path / "neg.csv").write_text("table,row\n0,-1\n")
    with pytest.raises(ValueError, match="negative"):
        Trace.load(tmp_path / "neg.csv")
    with pytest.raises(ValueError, match="unknown row distribution"):
        Trace.from_model("rmc1", 2, distribution="gauss")


def test_lookup_ids_out_of_range_are_refused_by_the_core() -> None:
    from recengine import _core

    z = np.zeros(3, np.int64)
    for col, value, match in ((0, -1, "must not be negative"), (2, -5, "must not be negative"),
                              (0, 2**33, "below 2\\^32"), (1, 2**40, "below 2\\^32")):
        cols = [z.copy() for _ in range(4)]
        cols[col][1] = value
        with pytest.raises(IndexError, match=match):
            _core.nmp_emulate([10], *cols)
