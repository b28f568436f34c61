"""recengine.nn against torch.nn.EmbeddingBag: forward and backward over the options, the
module contract (state_dict, from_pretrained, convert) and torch's exceptions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import recengine.nn as rnn  # noqa: E402
from recengine.nn import functional as RF  # noqa: E402


@st.composite
def bag_inputs(draw: Any) -> dict[str, Any]:
    num = draw(st.integers(1, 60))
    dim = draw(st.sampled_from([1, 3, 8, 16, 17, 33, 64]))
    mode = draw(st.sampled_from(["sum", "mean", "max"]))
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    two_d = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if two_d:
        bags, per_bag = draw(st.integers(0, 8)), draw(st.integers(1, 6))
        inp = torch.randint(0, num, (bags, per_bag), generator=g, dtype=index_dtype)
        offsets, include_last = None, False
    else:
        lengths = draw(st.lists(st.integers(0, 7), min_size=0, max_size=10))
        inp = torch.randint(0, num, (sum(lengths),), generator=g, dtype=index_dtype)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        include_last = draw(st.booleans())
        offsets = torch.tensor(starts if include_last else starts[:-1], dtype=index_dtype)
        if not include_last and len(lengths) == 0:
            offsets = torch.zeros(0, dtype=index_dtype)
    psw = None
    if mode == "sum" and draw(st.booleans()):
        psw = torch.randn(inp.shape, generator=g)
    padding = draw(st.one_of(st.none(), st.integers(-num, num - 1)))
    weight = torch.randn(num, dim, generator=g)
    return dict(input=inp, offsets=offsets, weight=weight, mode=mode, psw=psw,
                include_last_offset=include_last, padding_idx=padding)


def _both(case: dict[str, Any], fn: Any) -> tuple[Any, Any]:
    args = dict(offsets=case["offsets"], mode=case["mode"], per_sample_weights=case["psw"],
                include_last_offset=case["include_last_offset"],
                padding_idx=case["padding_idx"])
    return (fn(torch.nn.functional.embedding_bag, case["input"], case["weight"], args),
            fn(RF.embedding_bag, case["input"], case["weight"], args))


@settings(max_examples=150, deadline=None)
@given(bag_inputs())
def test_forward_equals_torch(case: dict[str, Any]) -> None:
    with torch.no_grad():
        want, got = _both(case, lambda f, i, w, a: f(i, w, **a))
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(bag_inputs().filter(lambda c: c["mode"] != "max"), st.booleans())
def test_backward_equals_torch(case: dict[str, Any], sparse: bool) -> None:
    def run(f: Any, i: Any, w: Any, a: dict[str, Any]) -> tuple[Any, Any]:
        w = w.clone().requires_grad_(True)
        psw = a["per_sample_weights"]
        if psw is not None:
            psw = psw.clone().requires_grad_(True)
        out = f(i, w, **{**a, "per_sample_weights": psw, "sparse": sparse})
        g = torch.Generator().manual_seed(1)
        out.backward(torch.randn(out.shape, generator=g))
        return w.grad, None if psw is None else psw.grad

    (gw_t, gp_t), (gw_r, gp_r) = _both(case, run)
    assert gw_r.layout == gw_t.layout == (torch.sparse_coo if sparse else torch.strided)
    if sparse:
        gw_r, gw_t = gw_r.to_dense(), gw_t.to_dense()
    torch.testing.assert_close(gw_r, gw_t, rtol=1e-5, atol=1e-5)
    if gp_t is not None:
        torch.testing.assert_close(gp_r, gp_t, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64_falls_back_and_float32_op_is_differentiable() -> None:
    # float64 weights run torch's kernel (the core pools float32/float16).
    w = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    x, o = torch.tensor([0, 2, 2, 5]), torch.tensor([0, 1])
    assert torch.autograd.gradcheck(lambda w: RF.embedding_bag(x, w, o, mode="sum"), (w,))
    w32 = torch.randn(6, 3, requires_grad=True)
    out = RF.embedding_bag(x, w32, o, mode="mean")
    assert out.requires_grad
    out.sum().backward()
    # Bag 0 is row 0, bag 1 is the mean of rows 2, 2, 5: d(sum)/d(row 2) = 2/3.
    torch.testing.assert_close(w32.grad[2], torch.full((3,), 2 / 3))
    torch.testing.assert_close(w32.grad[0], torch.ones(3))


def test_module_is_a_drop_in() -> None:
    torch.manual_seed(0)
    ref = torch.nn.EmbeddingBag(50, 8, mode="sum", padding_idx=3)
    mod = rnn.EmbeddingBag(50, 8, mode="sum", padding_idx=3)
    assert list(mod.state_dict()) == list(ref.state_dict()) == ["weight"]
    mod.load_state_dict(ref.state_dict())
    ref.load_state_dict(mod.state_dict())
    assert isinstance(mod.weight, torch.nn.Parameter)
    assert (mod.num_embeddings, mod.embedding_dim, mod.mode, mod.padding_idx) == (50, 8, "sum", 3)
    x, o = torch.tensor([1, 3, 7, 9, 3]), torch.tensor([0, 2])
    torch.testing.assert_close(mod(x, o), ref(x, o))
    pre = rnn.EmbeddingBag.from_pretrained(ref.weight.detach(), mode="max")
    assert type(pre) is rnn.EmbeddingBag and pre.mode == "max"
    with torch.no_grad():
        torch.testing.assert_close(pre(x, o), torch.nn.functional.embedding_bag(
            x, ref.weight, o, mode="max"))


def test_in_place_updates_are_seen() -> None:
    mod = rnn.EmbeddingBag(10, 4, mode="sum")
    x, o = torch.tensor([1, 2]), torch.tensor([0])
    opt = torch.optim.SGD(mod.parameters(), lr=0.5)
    before = mod(x, o).detach().clone()
    mod(x, o).sum().backward()
    opt.step()
    after = mod(x, o).detach()
    torch.testing.assert_close(after, before - 0.5 * 2 * torch.ones_like(before))


def test_convert_nested() -> None:
    class Inner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bags = torch.nn.ModuleList([torch.nn.EmbeddingBag(20, 4, mode="mean"),
                                             torch.nn.EmbeddingBag(30, 2, mode="sum")])

    model = torch.nn.Sequential(Inner(), torch.nn.Linear(6, 1))
    weights = [b.weight for b in model[0].bags]
    rnn.convert(model)
    assert all(type(b) is rnn.EmbeddingBag for b in model[0].bags)
    assert [b.weight for b in model[0].bags] == weights  # the same Parameters
    assert type(model[1]) is torch.nn.Linear


@pytest.mark.parametrize(
    "args",
    [
        dict(input=[[1, 2]], offsets=[0]),  # offsets with 2-D input: ValueError
        dict(input=[1, 2], offsets=[0], mode="mean", psw=True),  # NotImplementedError
        dict(input=[1, 99], offsets=[0]),  # out of range
        dict(input=[1, -1], offsets=[0]),  # negative
        dict(input=[1, 2], offsets=[1]),  # offsets[0] != 0
        dict(input=[1, 2], offsets=[0, 5], include_last_offset=True),  # past the end
    ],
)
def test_same_exception_as_torch(args: dict[str, Any]) -> None:
    w = torch.randn(10, 4)
    inp = torch.tensor(args["input"])
    kw = dict(offsets=torch.tensor(args["offsets"]), mode=args.get("mode", "sum"),
              include_last_offset=args.get("include_last_offset", False),
              per_sample_weights=torch.ones(inp.shape) if args.get("psw") else None)
    with pytest.raises(Exception) as theirs:
        torch.nn.functional.embedding_bag(inp, w, **kw)
    with pytest.raises(theirs.type):
        RF.embedding_bag(inp, w, **kw)


def test_fallbacks_match_torch() -> None:
    torch.manual_seed(0)
    x, o = torch.tensor([1, 2, 3, 1]), torch.tensor([0, 3])
    w64 = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(RF.embedding_bag(x, w64, o),
                               torch.nn.functional.embedding_bag(x, w64, o))
    w = torch.randn(5, 3)
    for kw in [dict(max_norm=1.0), dict(scale_grad_by_freq=True)]:
        a, b = w.clone(), w.clone()
        torch.testing.assert_close(RF.embedding_bag(x, a, o, **kw),
                                   torch.nn.functional.embedding_bag(x, b, o, **kw))
    wg = w.clone().requires_grad_(True)
    out = RF.embedding_bag(x, wg, o, mode="max")
    out.sum().backward()
    wt = w.clone().requires_grad_(True)
    torch.nn.functional.embedding_bag(x, wt, o, mode="max").sum().backward()
    torch.testing.assert_close(wg.grad, wt.grad)


def test_float16_weights() -> None:
    w = torch.randn(20, 16).half()
    x, o = torch.randint(0, 20, (12,)), torch.tensor([0, 4, 9])
    with torch.no_grad():
        got = RF.embedding_bag(x, w, o, mode="sum")
        want = torch.nn.functional.embedding_bag(x, w.float(), o, mode="sum").half()
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


def test_core_runs_where_it_should(core_pool_calls: list[int]) -> None:
    calls = core_pool_calls
    w = torch.randn(10, 4)
    x, o = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    with torch.no_grad():
        for mode in ("sum", "mean", "max"):
            RF.embedding_bag(x, w, o, mode=mode)
        RF.embedding_bag(x.reshape(1, 3), w, mode="sum", per_sample_weights=torch.ones(1, 3))
        RF.embedding_bag(x, w.half(), o, padding_idx=2)
    RF.embedding_bag(x, w.clone().requires_grad_(True), o, mode="mean")
    assert len(calls) == 6
    calls.clear()
    RF.embedding_bag(x, w.double(), o)
    RF.embedding_bag(x, w.clone(), o, max_norm=1.0)
    RF.embedding_bag(x, w.clone().requires_grad_(True), o, mode="max")
    assert calls == []


def test_replaced_weight_data_is_seen() -> None:
    mod = rnn.EmbeddingBag(10, 4, mode="sum")
    x, o = torch.tensor([1, 2]), torch.tensor([0])
    with torch.no_grad():
        mod(x, o)
        mod.weight.data = torch.ones(10, 4)  # new storage: the cached view must not be reused
        torch.testing.assert_close(mod(x, o), torch.full((1, 4), 2.0))
        mod.weight.data = torch.ones(12, 4).half()  # new shape and dtype
        torch.testing.assert_close(mod(x, o), torch.full((1, 4), 2.0).half())


def test_a_module_with_an_unknown_mode_is_refused_when_built() -> None:
    # torch takes any string and fails at the first call; refusing it at once is kinder.
    with pytest.raises(ValueError, match="mode must be one of sum, mean, max"):
        rnn.EmbeddingBag(10, 4, mode="median")
