"""Sharded lookup: plans, the in-process executor and the router, against the unsharded lookup."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import recengine
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine import _core
from recengine.shard import (
    STRATEGIES,
    Piece,
    ShardedEmbedding,
    ShardPlan,
    ShardTable,
    TablePlacement,
    measure_access,
    plan,
)

DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")
MODES = ("sum", "mean", "max")


def _cuts(draw: Any, n: int, k: int) -> list[tuple[int, int]]:
    """``k`` (at most ``n``) contiguous non-empty ranges tiling ``0..n``."""
    k = min(k, n)
    inner = sorted(draw(st.sets(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1))) \
        if k > 1 else []
    bounds = [0, *inner, n]
    return list(zip(bounds[:-1], bounds[1:]))


@st.composite
def sharded_cases(draw: Any) -> tuple[Any, ...]:
    num_tables = draw(st.integers(1, 4))
    num_shards = draw(st.integers(1, 4))
    batch = draw(st.integers(0, 6))
    mode = draw(st.sampled_from(MODES))
    weighted = mode == "sum" and draw(st.booleans())
    tables, placements, indices, lengths, weights = [], [], [], [], []
    for t in range(num_tables):
        rows, dim = draw(st.integers(1, 60)), draw(st.integers(1, 20))
        dtype = draw(st.sampled_from(DTYPES))
        tables.append(recengine.EmbeddingTable.random(rows, dim, dtype=dtype, seed=t))
        split = draw(st.sampled_from(("table", "row", "column", "table_row", "replicated")))
        shard = st.integers(0, num_shards - 1)
        if split == "table":
            pieces = [Piece(draw(shard), (0, rows), (0, dim))]
        elif split in ("row", "table_row"):
            pieces = [Piece(draw(shard), r, (0, dim))
                      for r in _cuts(draw, rows, draw(st.integers(1, 4)))]
        elif split == "column":
            pieces = [Piece(draw(shard), (0, rows), c)
                      for c in _cuts(draw, dim, draw(st.integers(1, 4)))]
        else:
            shards = draw(st.lists(shard, min_size=1, max_size=num_shards, unique=True))
            pieces = [Piece(s, (0, rows), (0, dim)) for s in shards]
        placements.append(TablePlacement(ShardTable(f"t{t}", rows, dim, dtype), split, pieces))
        lens = np.array(draw(st.lists(st.integers(0, 5), min_size=batch, max_size=batch)),
                        dtype=np.int64)
        lengths.append(lens)
        indices.append(np.array(draw(st.lists(st.integers(0, rows - 1), min_size=int(lens.sum()),
                                              max_size=int(lens.sum()))), dtype=np.int64))
        weights.append(np.array(draw(st.lists(st.floats(-2, 2, width=32),
                                              min_size=int(lens.sum()),
                                              max_size=int(lens.sum()))), dtype=np.float32)
                       if weighted else None)
    p = ShardPlan("given", num_shards, placements)
    return tables, p, indices, lengths, (weights if weighted else None), mode


def _close(got: np.ndarray, want: np.ndarray, mode: str) -> None:
    if mode == "max":
        np.testing.assert_array_equal(got, want)  # max is order-free: exact
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=150, deadline=None)
@given(sharded_cases())
def test_sharded_lookup_equals_unsharded(case: tuple[Any, ...]) -> None:
    tables, p, indices, lengths, weights, mode = case
    want = recengine.EmbeddingCollection(tables).lookup(indices, lengths=lengths,
                                                        weights=weights, mode=mode)
    got = ShardedEmbedding(p.check(), tables).lookup(indices, lengths=lengths,
                                                     weights=weights, mode=mode)
    assert got.shape == want.shape and got.dtype == np.float32
    _close(got, want, mode)


@settings(max_examples=100, deadline=None)
@given(sharded_cases())
def test_routed_shares_pooled_elsewhere_merge_to_unsharded(case: tuple[Any, ...]) -> None:
    # What the distributed backend does: route, pool each share on its piece alone, merge.
    tables, p, indices, lengths, weights, mode = case
    emb = ShardedEmbedding(p.check(), tables)
    router = p.router()
    routed = router.route(indices, lengths=lengths, weights=weights, mode=mode)
    blocks = {}
    for shard, work in routed.by_shard(router).items():
        for t, piece, ids, offsets, w, share_mode in work:
            assert p.placements[t].pieces[piece].shard == shard
            blocks[(t, piece)] = emb.piece(t, piece).lookup(
                ids, offsets, weights=w, mode=share_mode, include_last_offset=True)
    got = routed.merge(router, blocks)
    want = recengine.EmbeddingCollection(tables).lookup(indices, lengths=lengths,
                                                        weights=weights, mode=mode)
    _close(got, want, mode)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(STRATEGIES), st.integers(1, 5), st.sampled_from(MODES),
       st.integers(0, 2**31 - 1))
def test_every_strategy_equals_unsharded(strategy: str, shards: int, mode: str,
                                         seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = [recengine.EmbeddingTable.random(int(rng.integers(1, 300)),
                                              int(rng.integers(1, 40)),
                                              dtype=str(rng.choice(DTYPES)), seed=i)
              for i in range(int(rng.integers(1, 7)))]
    specs = [ShardTable(f"t{i}", t.num_rows, t.dim, t.dtype, lookups=float(rng.integers(0, 50)),
                        net=f"n{i % 2}") for i, t in enumerate(tables)]
    p = plan(specs, shards, strategy=strategy, batch=int(rng.integers(1, 100)))
    batch = 5
    lengths = [rng.integers(0, 6, batch) for _ in tables]
    indices = [rng.integers(0, t.num_rows, int(n.sum())) for t, n in zip(tables, lengths)]
    want = recengine.EmbeddingCollection(tables).lookup(indices, lengths=lengths, mode=mode)
    _close(ShardedEmbedding(p, tables).lookup(indices, lengths=lengths, mode=mode), want, mode)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(("capacity", "load", "net", "cost")), st.integers(1, 6),
       st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 64), st.integers(0, 100)),
                min_size=1, max_size=12),
       st.floats(1.0, 3.0))
def test_planners_respect_the_memory_cap(strategy: str, shards: int,
                                         shapes: list[tuple[int, int, int]],
                                         slack: float) -> None:
    tables = [ShardTable(f"t{i}", r, d, lookups=float(n), net=f"n{i % 3}")
              for i, (r, d, n) in enumerate(shapes)]
    cap = math.ceil(max(max(t.nbytes for t in tables), sum(t.nbytes for t in tables) / shards)
                    * slack)
    try:
        p = plan(tables, shards, strategy=strategy, memory_per_shard=cap)
    except ValueError as e:
        # Table-wise packing can fail where the bytes would fit split; it must say so.
        assert "fits on none" in str(e) or "does not fit" in str(e) or "cannot be placed" in str(e)
        return
    assert all(b <= cap for b in p.shard_bytes())
    assert sum(p.shard_bytes()) == sum(t.nbytes for t in tables)
    assert all(q.shard < shards for pl in p.placements for q in pl.pieces)


def test_strategies_place_as_documented() -> None:
    big = ShardTable("big", 100_000, 64, lookups=100)
    small = [ShardTable(f"s{i}", 1_000, 16, lookups=1) for i in range(4)]
    assert plan([big, *small], 4, strategy="singular").num_shards == 1
    load = plan([big, *small], 2, strategy="load")
    assert load.placements[0].pieces[0].shard not in {pl.pieces[0].shard
                                                       for pl in load.placements[1:]}
    cost = plan([big, *small], 4, strategy="cost", batch=64)
    assert cost.placements[0].split in ("row", "column")  # the hot table is split
    assert all(pl.split == "table" for pl in cost.placements[1:])
    assert cost.predicted_latency_ms(64) < plan([big, *small], 4, strategy="capacity"
                                                ).predicted_latency_ms(64)
    user = [ShardTable(f"u{i}", 1000, 8, net="user") for i in range(3)]
    item = [ShardTable(f"i{i}", 1000, 8, net="item") for i in range(3)]
    net = plan(user + item, 2, strategy="net")
    homes = {pl.table.net: {q.shard for q in pl.pieces} for pl in net.placements}
    assert homes["user"].isdisjoint(homes["item"])


def test_describe_json_and_figures() -> None:
    tables = [ShardTable(f"t{i}", 1000 * (i + 1), 16, lookups=10) for i in range(5)]
    p = plan(tables, 3, strategy="capacity")
    text = p.describe(batch=8)
    assert "plan 'capacity'" in text and len(text.splitlines()) == 2 + 3
    assert sum(p.shard_lookups(8)) == pytest.approx(5 * 10 * 8)
    q = ShardPlan.from_json(p.to_json())
    assert q.to_core() == p.to_core() and q.shard_bytes() == p.shard_bytes()
    assert measure_access([([np.arange(6), np.arange(2)], 2), ([np.arange(4), []], 2)]) == \
        [2.5, 0.5]


def test_bad_plans_and_input() -> None:
    t = ShardTable("t", 100, 8)
    with pytest.raises(ValueError, match="positive integer"):
        plan([t], 0)
    with pytest.raises(ValueError, match="unknown strategy"):
        plan([t], 2, strategy="random")
    with pytest.raises(ValueError, match="fits on none"):
        plan([t, ShardTable("u", 10, 8)], 2, strategy="capacity", memory_per_shard=3000)
    with pytest.raises(ValueError, match="more than"):
        plan([t], 2, strategy="cost", memory_per_shard=100)
    gap = ShardPlan("given", 2, [TablePlacement(t, "row", [Piece(0, (0, 40), (0, 8)),
                                                           Piece(1, (50, 100), (0, 8))])])
    with pytest.raises(ValueError, match=r"leaves rows 40\.\.50 on no shard"):
        gap.check()
    off = ShardPlan("given", 2, [TablePlacement(t, "table", [Piece(2, (0, 100), (0, 8))])])
    with pytest.raises(ValueError, match="shard 2 of 2"):
        off.check()
    with pytest.raises(ValueError, match="unknown split"):
        _core.Router([(100, 8)], 1, ["diagonal"], [[(0, 0, 100, 0, 8)]])

    tables = [recengine.EmbeddingTable.random(100, 8), recengine.EmbeddingTable.random(50, 4)]
    p = plan(tables, 2, strategy="cost")
    emb = ShardedEmbedding(p, tables)
    lengths = [np.array([2, 1]), np.array([1, 2])]
    bad = [np.array([1, 2, 3]), np.array([0, 50, 1])]
    with pytest.raises(IndexError) as sharded:
        emb.lookup(bad, lengths=lengths)
    with pytest.raises(IndexError) as unsharded:
        recengine.EmbeddingCollection(tables).lookup(bad, lengths=lengths)
    assert str(sharded.value) == str(unsharded.value)
    with pytest.raises(ValueError, match="every table needs the same batch"):
        emb.lookup([np.array([1]), np.array([1, 2])], lengths=[np.array([1]), np.array([1, 1])])
    with pytest.raises(ValueError, match="places 2 tables, 3 given"):
        ShardedEmbedding(p, tables + tables[:1])
    with pytest.raises(ValueError):
        emb.lookup([np.array([1]), np.array([1])], lengths=[np.array([1])] * 2, mode="median")


def test_calls_count_the_lookups_each_shard_receives() -> None:
    tables = [recengine.EmbeddingTable.random(100, 8) for _ in range(2)]
    rows = TablePlacement(ShardTable("a", 100, 8), "row", [Piece(0, (0, 50), (0, 8)),
                                                           Piece(1, (50, 100), (0, 8))])
    whole = TablePlacement(ShardTable("b", 100, 8), "table", [Piece(1, (0, 100), (0, 8))])
    emb = ShardedEmbedding(ShardPlan("given", 3, [rows, whole]).check(), tables)
    calls = emb.calls([np.array([1, 2, 60]), np.array([5])], lengths=[np.array([3]),
                                                                     np.array([1])])
    assert calls == {0: 2, 1: 2}  # shard 2 holds nothing and is not called


def test_the_study_in_process_and_its_command_line(tmp_path: Any, capsys: Any) -> None:
    import json

    from recengine.cli import main
    from recengine.shard.study import StudyConfig, model_nets, run_study, summarize_study

    rows = run_study(StudyConfig(model="ncf", shards=2, queries=10, warmup=2, table_mb=2,
                                 backends=("inprocess",)))
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    base = rows[0]
    assert base["strategy"] == "singular" and base["p99_overhead"] == 1.0
    assert base["compute_overhead"] == 1.0 and base["shard_calls_per_query"] == 1.0
    for r in rows[1:]:
        assert r["shards"] == 2 and r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]
        assert r["shard_calls_per_query"] == 2.0  # every ncf query reads all four tables
        assert r["lookups_per_shard_call"] * r["shard_calls_per_query"] == \
            base["lookups_per_shard_call"]
    summary = summarize_study(rows)["inprocess"]
    assert summary["best"] in STRATEGIES and summary["rounds"] == 3  # the default repeats
    low, high = summary["p99_overhead_range"]
    best = next(r for r in rows if r["strategy"] == summary["best"])
    assert low == min(best["p99_overhead_rounds"]) and high == max(best["p99_overhead_rounds"])
    assert sum(summary["wins"].values()) == 3 and "singular" not in summary["wins"]
    assert all(len(r["p99_ms_rounds"]) == 3 and r["queries"] == 30 for r in rows)
    assert base["p99_overhead_rounds"] == [1.0, 1.0, 1.0]
    assert model_nets("ncf", 4) == ["mf", "mf", "mlp", "mlp"]
    assert model_nets("rmc1", 8) == ["user"] * 4 + ["item"] * 4

    plot = tmp_path / "shard.png"
    assert main(["shard", "--model", "wnd", "--shards", "3", "--queries", "5", "--table-mb", "4",
                 "--backends", "inprocess", "--strategies", "load,cost", "--json",
                 "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["strategy"], r["backend"]) for r in out] == [
        ("singular", "inprocess"), ("load", "inprocess"), ("cost", "inprocess")]
    for key in ("model", "strategy", "backend", "p50_ms", "p99_ms", "p99_overhead",
                "compute_overhead"):
        assert all(key in r for r in out)
    assert plot.stat().st_size > 0
    for bad in (["--shards", "0"], ["--strategies", "random"], ["--backends", "mpi"]):
        with pytest.raises(SystemExit) as exit_:
            main(["shard", *bad])
        assert exit_.value.code == 2


def test_weights_outside_sum_mode_are_refused_as_unsharded() -> None:
    tables = [recengine.EmbeddingTable.random(40, 4)]
    rows = TablePlacement(ShardTable("a", 40, 4), "row", [Piece(0, (0, 20), (0, 4)),
                                                          Piece(1, (20, 40), (0, 4))])
    emb = ShardedEmbedding(ShardPlan("given", 2, [rows]).check(), tables)
    args = ([np.array([1, 30])], None, [np.array([2])], [np.ones(2, np.float32)])
    for target in (emb, recengine.EmbeddingCollection(tables)):
        with pytest.raises(ValueError, match="only supported with mode"):
            target.lookup(*args, mode="mean")
    with pytest.raises(ValueError, match=r"weights must have the indices' shape"):
        emb.lookup([np.array([1, 30])], lengths=[np.array([2])],
                   weights=[np.ones(1, np.float32)])


@given(specs=st.lists(st.tuples(st.integers(1, 5000), st.sampled_from([4, 16, 32, 64, 128, 256]),
                                st.integers(0, 200), st.sampled_from(["fp32", "fp16", "int8"])),
                      min_size=1, max_size=12),
       shards=st.integers(1, 6), batch=st.sampled_from([1, 16, 256]))
@settings(max_examples=60)
def test_the_cost_planner_optimises_what_the_plan_reports(specs: list[Any], shards: int,
                                                          batch: int) -> None:
    """One cost function: the shard times the cost planner chose by are the plan's own
    predicted_ms (up to the order in which the pieces' times are summed)."""
    from recengine.shard.plan import CostModel, _cost_plan

    tables = [ShardTable(f"t{i}", rows, dim, lookups=looks, dtype=dtype)
              for i, (rows, dim, looks, dtype) in enumerate(specs)]
    cm = CostModel()
    _, seconds = _cost_plan(tables, shards, None, cm, batch)
    p = plan(tables, shards, strategy="cost", batch=batch)
    assert [1e3 * s for s in seconds] == pytest.approx(p.predicted_ms(batch), rel=1e-12)
    assert max(seconds) * 1e3 == pytest.approx(p.predicted_latency_ms(batch), rel=1e-12)
