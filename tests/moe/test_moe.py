"""recengine.moe: gating against references, buffered == resident, traces and placement."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from recengine.cache import POLICIES  # noqa: E402
from recengine.moe import ExpertBuffer, MoE, dense_reference, placement, traces  # noqa: E402

layers = st.tuples(st.integers(1, 12), st.integers(1, 24), st.integers(1, 10), st.integers(1, 4),
                   st.integers(1, 40), st.integers(0, 2**31 - 1))


def _layer(d: int, h: int, e: int, k: int, seed: int, **kw: Any) -> Any:
    torch.manual_seed(seed)
    layer = MoE(d, h, e, top_k=min(k, e), **kw)
    with torch.no_grad():  # non-zero biases, so that padding and drops would show
        layer.b1.normal_()
        layer.b2.normal_()
    return layer


@settings(max_examples=60, deadline=None)
@given(layers)
def test_dynamic_gating_equals_the_dense_top_k_reference(case: tuple[int, ...]) -> None:
    d, h, e, k, s, seed = case
    layer = _layer(d, h, e, k, seed)
    x = torch.randn(s, d)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense_reference(layer, x), rtol=1e-5, atol=1e-5)
    assert layer.last_routing.shape == (s, min(k, e)) and layer.last_dropped == 0


def _static_reference(layer: Any, x: Any) -> tuple[Any, int]:
    """GShard's assignment as loops: choice j of every token before choice j + 1, token
    order, at most C per expert; a choice past capacity adds nothing."""
    experts, weights = layer.route(x)
    cap = layer.capacity(x.shape[0])
    filled = [0] * layer.num_experts
    out = torch.zeros_like(x)
    dropped = 0
    for j in range(layer.top_k):
        for s in range(x.shape[0]):
            e = int(experts[s, j])
            if filled[e] < cap:
                filled[e] += 1
                out[s] += weights[s, j] * layer.expert(e, x[s:s + 1])[0]
            else:
                dropped += 1
    return out, dropped


@settings(max_examples=60, deadline=None)
@given(layers, st.floats(0.1, 3.0))
def test_static_gating_drops_past_capacity(case: tuple[int, ...], factor: float) -> None:
    d, h, e, k, s, seed = case
    layer = _layer(d, h, e, k, seed, gating="static", capacity_factor=factor)
    x = torch.randn(s, d)
    with torch.no_grad():
        got = layer(x)
        want, dropped = _static_reference(layer, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert layer.last_dropped == dropped
    assert layer.capacity(s) == max(1, math.ceil(factor * s * layer.top_k / e))


def test_static_gating_with_room_for_all_equals_dynamic() -> None:
    dyn = _layer(8, 16, 6, 2, 1)
    sta = _layer(8, 16, 6, 2, 1, gating="static", capacity_factor=6.0)
    sta.load_state_dict(dyn.state_dict())
    x = torch.randn(30, 8)
    with torch.no_grad():
        torch.testing.assert_close(sta(x), dyn(x), rtol=1e-5, atol=1e-5)
    assert sta.last_dropped == 0


def test_both_gatings_train() -> None:
    for gating in ("dynamic", "static"):
        layer = _layer(6, 10, 4, 2, 2, gating=gating)
        x = torch.randn(12, 6, requires_grad=True)
        layer(x).square().sum().backward()
        assert x.grad is not None and layer.experts.grad is not None
        assert layer.gate.weight.grad is not None
        assert layer._part(layer.experts.grad, "w1").abs().sum() > 0


@settings(max_examples=40, deadline=None)
@given(layers, st.integers(1, 10), st.sampled_from(POLICIES[:4]), st.integers(1, 4))
def test_buffered_output_equals_all_resident_exactly(case: tuple[int, ...], slots: int,
                                                     policy: str, batches: int) -> None:
    d, h, e, k, s, seed = case
    layer = _layer(d, h, e, k, seed).eval()
    xs = [torch.randn(s, d) for _ in range(batches)]
    with torch.no_grad():
        want = [layer(x) for x in xs]
        layer.attach_buffer(ExpertBuffer(slots=min(slots, e), policy=policy))
        try:
            for x, w in zip(xs, want):
                assert torch.equal(layer(x), w)
            stats = layer.buffer.stats()
            assert stats["hits"] + stats["misses"] >= batches
            assert stats["bytes_copied"] == stats["misses"] * layer.buffer.cache.blob_bytes
            assert not any(layer.buffer.cache.pins())
        finally:
            layer.detach_buffer()


def test_buffer_rules_and_refresh(tmp_path: Any) -> None:
    layer = _layer(4, 8, 5, 2, 3)
    with pytest.raises(ValueError, match="slots"):
        ExpertBuffer(slots=0)
    with pytest.raises(ValueError, match="unknown policy"):
        ExpertBuffer(slots=2, policy="random")
    layer.attach_buffer(ExpertBuffer(slots=2, path=tmp_path / "experts.npy"))
    assert (tmp_path / "experts.npy").is_file()
    x = torch.randn(9, 4)
    with pytest.raises(RuntimeError, match="inference"):
        layer(x)  # gradients on: the buffer does not train
    with torch.no_grad():
        before = layer(x)
        layer.w2.mul_(2.0)
        assert torch.equal(layer(x), before)  # still the packed weights
        layer.buffer.refresh(layer)
        assert not torch.equal(layer(x), before)
    assert layer.buffer.fast_bytes() == 2 * layer.buffer.cache.blob_bytes
    static = MoE(4, 8, 5, gating="static", buffer=ExpertBuffer(slots=2))
    with torch.no_grad(), pytest.raises(ValueError, match="dynamic"):
        static(x)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match="top_k"):
        MoE(4, 8, 3, top_k=4)
    with pytest.raises(ValueError, match="gating"):
        MoE(4, 8, 3, gating="sparse")


def test_synthetic_traces_follow_their_parameters() -> None:
    t = traces.synthetic(32, batches=30, tokens=64, top_k=2, zipf_s=1.2, locality=0.0, seed=1)
    assert all(b.shape == (64, 2) for b in t)
    assert all(len(set(row)) == 2 for b in t for row in b.tolist())
    loads = traces.expert_loads(t, 32)
    assert loads.sum() == pytest.approx(1.0) and loads.max() > 3 / 32  # skewed
    flat = traces.synthetic(32, 30, 64, 2, zipf_s=0.0, locality=0.0, seed=1)
    assert traces.expert_loads(flat, 32).max() < loads.max()

    def reuse(tr: list[Any]) -> float:
        sets = traces.active_sets(tr)
        return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(sets, sets[1:])]))

    sticky = traces.synthetic(32, 30, 8, 2, zipf_s=0.0, locality=0.9, seed=1)
    loose = traces.synthetic(32, 30, 8, 2, zipf_s=0.0, locality=0.0, seed=1)
    assert reuse(sticky) > reuse(loose)
    with pytest.raises(ValueError):
        traces.synthetic(4, 1, 1, top_k=5)


def test_recorded_traces_are_the_gates_choices() -> None:
    layer = _layer(6, 8, 5, 2, 4)
    xs = [torch.randn(7, 6) for _ in range(3)]
    rec = traces.record(layer, xs)
    with torch.no_grad():
        for x, r in zip(xs, rec):
            assert np.array_equal(layer.route(x)[0].numpy(), r)


def test_placement_balances_the_busiest_device() -> None:
    t = traces.synthetic(16, batches=40, tokens=128, top_k=2, zipf_s=1.5, locality=0.2, seed=2)
    loads = traces.expert_loads(t, 16)
    before = placement.max_device_load(placement.blocked(16, 4), t)
    greedy = placement.place(loads, 4)
    anti = placement.place(loads, 4, method="anticorrelation",
                           correlation=placement.coactivation(t, 16))
    for p in (greedy, anti):
        assert sorted(np.bincount(p, minlength=4).tolist()) == [4, 4, 4, 4]
        assert placement.max_device_load(p, t) < before
    with pytest.raises(ValueError, match="cannot hold"):
        placement.place(loads, 2, capacity=3)
    with pytest.raises(ValueError, match="correlation"):
        placement.place(loads, 4, method="anticorrelation")


def test_the_study_and_its_command_line(tmp_path: Any, capsys: Any) -> None:
    import json

    from recengine.cli import main
    from recengine.moe.study import MoEStudyConfig, run_study, summarize_study

    config = MoEStudyConfig(num_experts=8, d_model=8, d_hidden=16, batches=30, tokens=4,
                            slots=(2, 4, 8), timed_batches=3, gating_tokens=64, devices=2)
    rows = run_study(config)
    cache = [r for r in rows if r["kind"] == "cache"]
    assert len(cache) == 3 * len(POLICIES)
    for r in cache:
        assert 0 <= r["belady_miss_rate"] <= r["miss_rate"] <= 1
        assert r["memory_reduction"] >= 1 and r["throughput_ratio"] > 0
    full = [r for r in cache if r["slots"] == 8]  # every expert fits: only cold misses
    assert len({r["misses"] for r in full}) == 1 and full[0]["misses"] <= 8
    gating = {r["gating"]: r for r in rows if r["kind"] == "gating"}
    assert gating["dynamic"]["dropped_fraction"] == 0
    assert gating["static"]["intermediate_mb"] > 0
    assert set(summarize_study(rows)["placement"]) == {"blocked", "greedy", "anticorrelation"}

    plot = tmp_path / "moe.png"
    assert main(["moe", "--experts", "6", "--d-model", "8", "--d-hidden", "8", "--batches", "10",
                 "--tokens", "3", "--slots", "2,6", "--policies", "inactive_lifo,fifo",
                 "--timed-batches", "2", "--gating-tokens", "16", "--devices", "2", "--json",
                 "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    for r in (r for r in out if r["kind"] == "cache"):
        for key in ("policy", "slots", "miss_rate", "memory_reduction", "throughput_ratio"):
            assert key in r
    assert plot.stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["moe", "--policies", "random"])


def test_the_cache_directory_keeps_the_books() -> None:
    from recengine import _core

    d = _core.CacheDirectory(2, 5, "fifo")
    slots, fills = d.acquire(np.array([3, 1]))
    assert sorted(slots) == [0, 1] and sorted(fills) == sorted(zip([3, 1], slots))
    d.loaded(fills)
    d.release(np.array([3, 1]))
    slots2, fills2 = d.acquire(np.array([1, 4]))  # 1 hits; 4 evicts 3 (loaded first)
    assert slots2[0] == slots[1] and fills2 == [(4, slots[0])]
    with pytest.raises(ValueError, match="pin"):
        d.acquire(np.array([0]))  # both slots pinned
    d.release(np.array([1, 4]))
    assert d.stats()["hits"] == 1 and d.contents().count(None) == 0
    with pytest.raises(IndexError):
        d.acquire(np.array([5]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_buffered_cuda_layer_equals_all_resident() -> None:
    layer = _layer(64, 128, 16, 2, 5).cuda().eval()
    xs = [torch.randn(40, 64, device="cuda") for _ in range(6)]
    with torch.no_grad():
        want = [layer(x) for x in xs]
        layer.attach_buffer(ExpertBuffer(slots=5, policy="inactive_lifo"))
        got = [layer(x) for x in xs]
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    s = layer.buffer.stats()
    assert s["misses"] >= 5 and s["bytes_copied"] == s["misses"] * layer._layout["size"] * 4
