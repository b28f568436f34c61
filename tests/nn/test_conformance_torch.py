"""Conformance with torch: recengine.nn's EmbeddingBag and functional ``embedding_bag`` run
side by side with torch's own over the same inputs, for every weight dtype torch's CPU kernel
takes, and must give torch's outputs, gradients (dense and sparse, of the weight and of the
per-sample weights), dtypes and exceptions: the behaviours PyTorch's own EmbeddingBag tests pin
down. Tolerances are torch's defaults for each dtype (``torch.testing.assert_close``); float16
and bfloat16 weight gradients must be torch's bit for bit, as the core computes them in torch's
arithmetic and order."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import recengine.nn as rnn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from recengine.nn import functional as RF  # noqa: E402

WEIGHT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INDEX_DTYPES = [torch.int32, torch.int64]
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _run(fn: Callable[..., Any], inp: Any, weight: Any, grad_seed: Optional[int] = None,
         psw: Any = None, psw_grad: bool = False, **kw: Any) -> dict[str, Any]:
    """One call of ``fn`` (torch's or ours) on copies of the inputs, and the gradients of
    ``sum(out * g)`` for a seeded ``g`` when ``grad_seed`` is given."""
    w = weight.detach().clone().requires_grad_(grad_seed is not None)
    p = None if psw is None else psw.detach().clone().requires_grad_(psw_grad)
    out = fn(inp, w, per_sample_weights=p, **kw)
    result = {"out": out}
    if grad_seed is not None:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
        out.backward(g.to(out.dtype))
        result["grad"], result["psw_grad"] = w.grad, None if p is None else p.grad
    return result


def _same(ours: dict[str, Any], theirs: dict[str, Any], exact_grad: bool) -> None:
    assert ours["out"].dtype == theirs["out"].dtype
    assert ours["out"].shape == theirs["out"].shape
    torch.testing.assert_close(ours["out"], theirs["out"])
    if "grad" not in theirs:
        return
    gw_o, gw_t = ours["grad"], theirs["grad"]
    assert gw_o.layout == gw_t.layout and gw_o.dtype == gw_t.dtype
    if gw_t.is_sparse:
        # torch's sparse gradient is uncoalesced: one row per non-padding lookup, in order.
        assert torch.equal(gw_o._indices(), gw_t._indices())
        torch.testing.assert_close(gw_o._values(), gw_t._values())
        gw_o, gw_t = gw_o.to_dense(), gw_t.to_dense()
    if exact_grad:
        assert torch.equal(gw_o, gw_t), (gw_o - gw_t).abs().max()
    else:
        torch.testing.assert_close(gw_o, gw_t)
    if theirs["psw_grad"] is not None:
        torch.testing.assert_close(ours["psw_grad"], theirs["psw_grad"])


def _bags(gen: Any, num_rows: int, bag_sizes: list[int], index_dtype: Any,
          include_last_offset: bool) -> tuple[Any, Any]:
    lengths = torch.tensor(bag_sizes, dtype=torch.int64)
    inp = torch.randint(0, num_rows, (int(lengths.sum()),), generator=gen, dtype=index_dtype)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    offsets = starts if include_last_offset else starts[:-1]
    return inp, offsets.to(index_dtype)


# --------------------------------------------------------------------------------------------
# outputs and gradients, every dtype


# (torch has no sparse gradient in max mode)
CASES = [c for c in itertools.product(WEIGHT_DTYPES, ["sum", "mean", "max"], [False, True],
                                      [None, 0, -2], [False, True])
         if not (c[1] == "max" and c[2])]


@pytest.mark.parametrize(("dtype", "mode", "sparse", "padding_idx", "include_last_offset"),
                         CASES)
def test_outputs_and_gradients_match_torch(dtype: Any, mode: str, sparse: bool,
                                           padding_idx: Optional[int],
                                           include_last_offset: bool) -> None:
    gen = torch.Generator().manual_seed(hash((str(dtype), mode, sparse, padding_idx)) % 2**31)
    num_rows, dim = 40, 7
    # Many lookups per row (so the order of half-precision sums matters), an empty bag, and a
    # bag of padding only.
    sizes = [5, 0, 30, 1, 17, 60, 3, 2]
    inp, offsets = _bags(gen, num_rows, sizes, torch.int64, include_last_offset)
    if padding_idx is not None:
        inp[35:38] = padding_idx % num_rows  # part of bag 5
        inp[sizes[0]:sizes[0] + 0] = padding_idx % num_rows
    weight = torch.randn(num_rows, dim, generator=gen).to(dtype)
    kw = dict(offsets=offsets, mode=mode, sparse=sparse, padding_idx=padding_idx,
              include_last_offset=include_last_offset)
    theirs = _run(F.embedding_bag, inp, weight, grad_seed=1, **kw)
    ours = _run(RF.embedding_bag, inp, weight, grad_seed=1, **kw)
    _same(ours, theirs, exact_grad=dtype in HALF_DTYPES)
    module = rnn.EmbeddingBag.from_pretrained(weight, freeze=False, mode=mode, sparse=sparse,
                                              padding_idx=padding_idx,
                                              include_last_offset=include_last_offset)
    out = module(inp, offsets)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype))
    _same({"out": out, "grad": module.weight.grad, "psw_grad": None}, theirs,
          exact_grad=dtype in HALF_DTYPES)


@pytest.mark.parametrize(("dtype", "index_dtype", "trainable"),
                         list(itertools.product(WEIGHT_DTYPES, INDEX_DTYPES, [False, True])))
@pytest.mark.parametrize("sparse", [False, True])
def test_per_sample_weights_match_torch(dtype: Any, index_dtype: Any, trainable: bool,
                                        sparse: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    inp, offsets = _bags(gen, 25, [4, 0, 11, 40, 1], index_dtype, False)
    weight = torch.randn(25, 9, generator=gen).to(dtype)
    psw = torch.rand(inp.shape, generator=gen).to(dtype)
    kw = dict(offsets=offsets, mode="sum", sparse=sparse, psw=psw, psw_grad=trainable)
    theirs = _run(F.embedding_bag, inp, weight, grad_seed=2, **kw)
    ours = _run(RF.embedding_bag, inp, weight, grad_seed=2, **kw)
    _same(ours, theirs, exact_grad=dtype in HALF_DTYPES)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_two_dimensional_input_matches_torch(dtype: Any, mode: str) -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(12, 5, generator=gen).to(dtype)
    inp = torch.randint(0, 12, (6, 4), generator=gen)
    for grad_seed in (None, 4):
        if grad_seed is not None and mode == "max" and dtype in HALF_DTYPES:
            continue  # torch has no max-mode backward for these on the CPU either way
        kw = dict(mode=mode, padding_idx=3)
        with torch.set_grad_enabled(grad_seed is not None):
            _same(_run(RF.embedding_bag, inp, weight, grad_seed=grad_seed, **kw),
                  _run(F.embedding_bag, inp, weight, grad_seed=grad_seed, **kw),
                  exact_grad=dtype in HALF_DTYPES)


def test_half_gradients_follow_torchs_order_past_the_radix_sort_size() -> None:
    # From 32768 lookups torch sorts them with a stable radix sort, below with std::sort.
    gen = torch.Generator().manual_seed(5)
    for n in (32767, 32768):
        inp = torch.randint(0, 30, (n,), generator=gen)
        offsets = torch.arange(0, n, 64)
        weight = torch.randn(30, 4, generator=gen).half()
        for mode in ("sum", "mean"):
            kw = dict(offsets=offsets, mode=mode)
            _same(_run(RF.embedding_bag, inp, weight, grad_seed=6, **kw),
                  _run(F.embedding_bag, inp, weight, grad_seed=6, **kw), exact_grad=True)


@st.composite
def random_calls(draw: Any) -> dict[str, Any]:
    num_rows = draw(st.integers(1, 30))
    sizes = draw(st.lists(st.integers(0, 40), max_size=8))
    mode = draw(st.sampled_from(["sum", "mean"]))
    return dict(num_rows=num_rows, sizes=sizes, mode=mode, seed=draw(st.integers(0, 2**20)),
                dtype=draw(st.sampled_from(HALF_DTYPES)), sparse=draw(st.booleans()),
                psw=mode == "sum" and draw(st.booleans()),
                padding_idx=draw(st.one_of(st.none(), st.integers(-num_rows, num_rows - 1))))


@settings(max_examples=60, deadline=None)
@given(random_calls())
def test_half_precision_gradients_are_torchs_bit_for_bit(case: dict[str, Any]) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    inp, offsets = _bags(gen, case["num_rows"], case["sizes"], torch.int64, False)
    weight = (torch.randn(case["num_rows"], 3, generator=gen) * 4).to(case["dtype"])
    psw = torch.rand(inp.shape, generator=gen).to(case["dtype"]) if case["psw"] else None
    kw = dict(offsets=offsets, mode=case["mode"], sparse=case["sparse"], psw=psw,
              padding_idx=case["padding_idx"])
    _same(_run(RF.embedding_bag, inp, weight, grad_seed=case["seed"], **kw),
          _run(F.embedding_bag, inp, weight, grad_seed=case["seed"], **kw), exact_grad=True)


def test_empty_input_and_empty_bags() -> None:
    weight = torch.arange(1.0, 11.0).reshape(5, 2)
    for index_dtype, offsets_dtype, sparse in itertools.product(INDEX_DTYPES, INDEX_DTYPES,
                                                                [False, True]):
        inp = torch.tensor([], dtype=index_dtype)
        for offsets in ([0], [0, 0], [0, 0, 0, 0]):
            kw = dict(offsets=torch.tensor(offsets, dtype=offsets_dtype), mode="mean",
                      sparse=sparse)
            _same(_run(RF.embedding_bag, inp, weight, grad_seed=0, **kw),
                  _run(F.embedding_bag, inp, weight, grad_seed=0, **kw), exact_grad=True)
        psw = torch.tensor([], dtype=torch.float32)
        kw = dict(offsets=torch.zeros(5, dtype=offsets_dtype), mode="sum", psw=psw,
                  psw_grad=True)
        _same(_run(RF.embedding_bag, inp, weight, grad_seed=0, **kw),
              _run(F.embedding_bag, inp, weight, grad_seed=0, **kw), exact_grad=True)


def test_non_contiguous_weight() -> None:
    for dtype in WEIGHT_DTYPES:
        full = torch.randn(3, 4).to(dtype)
        strided = full[:, :3]
        inp, offsets = torch.tensor([0, 1, 2]), torch.tensor([0, 2])
        for mode in ("sum", "mean", "max"):
            _same(_run(RF.embedding_bag, inp, strided, offsets=offsets, mode=mode),
                  _run(F.embedding_bag, inp, strided, offsets=offsets, mode=mode),
                  exact_grad=True)


def test_mixed_index_dtypes_are_accepted() -> None:
    w, x, o = torch.randn(10, 2), torch.tensor([3, 1, 1, 1, 4, 0]), torch.tensor([0, 0, 3])
    for a, b in ((torch.int32, torch.int64), (torch.int64, torch.int32)):
        _same(_run(RF.embedding_bag, x.to(a), w, grad_seed=0, offsets=o.to(b)),
              _run(F.embedding_bag, x.to(a), w, grad_seed=0, offsets=o.to(b)), exact_grad=False)


def test_include_last_offset_with_padding() -> None:
    module = rnn.EmbeddingBag(100, 3, include_last_offset=True, padding_idx=61)
    inp = torch.tensor([0, 1, 2, 3])
    want = torch.stack([module.weight[0:3].mean(0), module.weight[3]])
    torch.testing.assert_close(module(inp, torch.tensor([0, 3, 3])), want)
    torch.testing.assert_close(module(inp, torch.tensor([0, 3, 4])), want)


def test_from_pretrained_and_functional_agree() -> None:
    weight = torch.rand(4, 3, requires_grad=True)
    inp = torch.tensor([[1, 3, 2], [0, 2, 1]])
    for kw in ({}, {"padding_idx": 2}, {"mode": "max"}, {"mode": "sum"}):
        module = rnn.EmbeddingBag.from_pretrained(weight, **kw)
        torch.testing.assert_close(module(inp), F.embedding_bag(inp, weight, **kw))
        assert module.weight.requires_grad is False


def test_per_sample_weights_grad_flags() -> None:
    # Every combination of which side needs a gradient runs (torch's test of it).
    for bag_grad, psw_grad in itertools.product([True, False], repeat=2):
        module = rnn.EmbeddingBag(256, 16, mode="sum")
        module.requires_grad_(bag_grad)
        x = torch.arange(1, 5).expand(3, -1)
        w = torch.rand(3, 4, requires_grad=psw_grad)
        out = module(x, per_sample_weights=F.softmax(w, dim=-1))
        assert out.requires_grad == (bag_grad or psw_grad)


# --------------------------------------------------------------------------------------------
# exceptions: torch's type and message for every input torch refuses


def _refusals() -> list[tuple[str, Callable[[Callable[..., Any], Any], Any]]]:
    """Calls ``call(embedding_bag, weight)`` that torch refuses, with a [10, 2] weight."""
    idx2 = [torch.tensor([[-1, 1]]), torch.tensor([[11, 8]]), torch.tensor([[3, 12]])]
    cases: list[tuple[str, Callable[[Callable[..., Any], Any], Any]]] = []
    for k, (inp, mode, pad, dtype) in enumerate(itertools.product(
            idx2, ["sum", "mean", "max"], [None, 0], [torch.int32, torch.int64])):
        cases.append((f"2-D out of range {k}", lambda f, w, inp=inp, mode=mode, pad=pad,
                      dtype=dtype: f(inp.to(dtype), w, mode=mode, padding_idx=pad)))
        if mode == "sum":
            cases.append((f"2-D out of range, weighted {k}", lambda f, w, inp=inp, pad=pad,
                          dtype=dtype: f(inp.to(dtype), w, mode="sum", padding_idx=pad,
                                         per_sample_weights=torch.randn(inp.shape))))
    x, o = torch.tensor([3, 1, 1, 1, 4, 0]), torch.tensor([0, 0, 3, 3, 6])
    for psw_dtype in (torch.float64, torch.float16, torch.bfloat16):
        cases.append((f"per-sample weights of {psw_dtype}", lambda f, w, d=psw_dtype: f(
            x, w, o, mode="sum", per_sample_weights=torch.rand(6, dtype=d))))
    cases += [
        ("weights of another length", lambda f, w: f(x, w, o, mode="sum",
                                                  per_sample_weights=torch.rand(5))),
        ("2-D weights, flat input", lambda f, w: f(torch.randint(5, (7, 3)), w, mode="sum",
                                               per_sample_weights=torch.rand(21))),
        ("weights in mean mode", lambda f, w: f(torch.randint(5, (7, 3)), w, mode="mean",
                                            per_sample_weights=torch.rand(7, 3))),
        ("weights in max mode", lambda f, w: f(torch.randint(5, (7, 3)), w, mode="max",
                                           per_sample_weights=torch.rand(7, 3))),
        ("2-D input with offsets", lambda f, w: f(torch.ones(3, 4, dtype=torch.long), w,
                                              torch.arange(3))),
        ("1-D input without offsets", lambda f, w: f(torch.ones(12, dtype=torch.long), w)),
        ("2-D input with no columns", lambda f, w: f(torch.zeros(3, 0, dtype=torch.long), w)),
        ("first offset not 0", lambda f, w: f(x, w, torch.tensor([1, 2]))),
        ("offset past the end", lambda f, w: f(x, w, torch.tensor([0, 100]))),
        ("last offset past the end", lambda f, w: f(x, w, torch.tensor([0, 7]),
                                                 include_last_offset=True)),
        ("5-D input", lambda f, w: f(torch.full((2, 0, 0, 6, 6), 2), w,
                                  torch.full((2, 0, 0, 6, 6), 0))),
        ("2-D offsets", lambda f, w: f(torch.full((2,), 1), w,
                                       torch.zeros(2, 2, dtype=torch.long))),
        ("3-D weight", lambda f, w: f(torch.full((2,), 1), w[None].expand(2, -1, -1),
                                      torch.zeros(2, dtype=torch.long))),
        ("float indices", lambda f, w: f(torch.tensor([1.0, 2.0]), w, torch.tensor([0]))),
        ("bad mode", lambda f, w: f(x, w, o, mode="median")),
        ("padding_idx out of range", lambda f, w: f(x, w, o, padding_idx=10)),
        ("padding_idx below range", lambda f, w: f(x, w, o, padding_idx=-11)),
        ("negative index", lambda f, w: f(torch.tensor([1, -1]), w, torch.tensor([0]))),
    ]
    return cases


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize(("name", "call"), _refusals(), ids=[n for n, _ in _refusals()])
def test_refusals_raise_torchs_exception(name: str, call: Callable[..., Any], grad: bool) -> None:
    weight = torch.randn(10, 2, requires_grad=grad)
    with pytest.raises(Exception) as theirs:
        call(F.embedding_bag, weight)
    with pytest.raises(theirs.type) as ours:
        call(RF.embedding_bag, weight)
    assert str(ours.value) == str(theirs.value)


def test_module_refusals_match_torch() -> None:
    for pad in (-12, -11, 10, 11):
        with pytest.raises(AssertionError, match="padding_idx must be within num_embeddings"):
            rnn.EmbeddingBag(10, 3, padding_idx=pad)
    module = rnn.EmbeddingBag(5, 2, mode="sum")
    x, o = torch.tensor([3, 1, 1, 1, 4, 0]), torch.tensor([0, 0, 3, 3, 6])
    with pytest.raises(RuntimeError, match="have the same type as"):
        module(x, o, torch.randn(6, dtype=torch.float64))


def test_core_still_runs_for_torchs_dtypes(core_pool_calls: list[int]) -> None:
    # Conformance must not come from handing everything to torch: float32, float16 and
    # bfloat16 calls, with and without gradients, reach the core.
    calls = core_pool_calls
    x, o = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = torch.randn(10, 4).to(dtype).requires_grad_(True)
        RF.embedding_bag(x, w, o, mode="mean").sum().backward()
        RF.embedding_bag(x, w, o, mode="sum", per_sample_weights=torch.rand(3).to(dtype))
    assert len(calls) == 6


def test_torchs_own_opinfo_samples() -> None:
    """Every sample torch's OpInfo database has for ``nn.functional.embedding_bag`` (torch's
    own test inputs), forward and gradients, within torch's tolerances."""
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except Exception as e:  # torch's internal test helpers are not part of its API
        pytest.skip(f"torch's OpInfo database does not import here: {e}")
    ops = [o for o in op_db if o.name == "nn.functional.embedding_bag"]
    assert ops, "torch's OpInfo database has no embedding_bag entry"
    checked = 0
    for dtype in WEIGHT_DTYPES:
        for sample in ops[0].sample_inputs("cpu", dtype, requires_grad=True):
            # The OpInfo's sample holds the weight as its input and the indices first.
            inp, weight, rest = sample.args[0], sample.input, sample.args[1:]
            kw = dict(sample.kwargs)
            psw = kw.pop("per_sample_weights", None)
            if rest:
                kw["offsets"] = rest[0]
            try:
                theirs = _run(F.embedding_bag, inp, weight, grad_seed=0, psw=psw,
                              psw_grad=psw is not None, **kw)
            except Exception as refusal:
                with pytest.raises(type(refusal)):
                    _run(RF.embedding_bag, inp, weight, grad_seed=0, psw=psw,
                         psw_grad=psw is not None, **kw)
                continue
            ours = _run(RF.embedding_bag, inp, weight, grad_seed=0, psw=psw,
                        psw_grad=psw is not None, **kw)
            _same(ours, theirs, exact_grad=dtype in HALF_DTYPES)
            checked += 1
    assert checked >= 100
