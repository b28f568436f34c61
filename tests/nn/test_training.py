"""recengine.nn in training and graph capture: optimizer steps leave the same weights as
torch's, bfloat16 weights, the Rust backward really runs, and torch.compile / torch.export
capture the custom op."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

import recengine.nn as rnn  # noqa: E402
from recengine.nn import _op  # noqa: E402
from recengine.nn import functional as RF  # noqa: E402


def _batches(num: int, steps: int, seed: int) -> list[tuple[Any, Any, Any]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        lengths = torch.randint(0, 6, (8,), generator=g)
        x = torch.randint(0, num, (int(lengths.sum()),), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        target = torch.randn(8, generator=g)
        out.append((x, offsets, target))
    return out


@pytest.mark.parametrize(
    "sparse, optimizer, mode",
    [
        (False, "sgd", "sum"),
        (False, "sgd", "mean"),
        (False, "adam", "mean"),
        (True, "sgd", "sum"),
        (True, "sgd", "mean"),
        (True, "sparse_adam", "sum"),
        (True, "sparse_adam", "mean"),
    ],
)
def test_optimizer_steps_equal_torch(sparse: bool, optimizer: str, mode: str) -> None:
    torch.manual_seed(3)
    num, dim = 40, 8
    ref = torch.nn.EmbeddingBag(num, dim, mode=mode, sparse=sparse, padding_idx=5)
    head_ref = torch.nn.Linear(dim, 1)
    mod = rnn.EmbeddingBag(num, dim, mode=mode, sparse=sparse, padding_idx=5)
    mod.load_state_dict(ref.state_dict())
    head = torch.nn.Linear(dim, 1)
    head.load_state_dict(head_ref.state_dict())

    def make(params: list[Any]) -> Any:
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.0)
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=0.05)
        return torch.optim.SparseAdam(params, lr=0.05)

    opts = [make(list(ref.parameters())), make(list(mod.parameters()))]
    head_opts = [torch.optim.SGD(h.parameters(), lr=0.1) for h in (head_ref, head)]
    for x, o, target in _batches(num, 6, seed=11):
        for bag, h, opt, hopt in [(ref, head_ref, opts[0], head_opts[0]),
                                  (mod, head, opts[1], head_opts[1])]:
            opt.zero_grad()
            hopt.zero_grad()
            loss = ((h(bag(x, o)).squeeze(1) - target) ** 2).mean()
            loss.backward()
            opt.step()
            hopt.step()
    torch.testing.assert_close(mod.weight, ref.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.weight, head_ref.weight, rtol=1e-5, atol=1e-5)
    # The padding row never moves.
    torch.testing.assert_close(mod.weight[5], ref.weight[5])


def test_backward_runs_in_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real = _op._core.pool_backward

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(kw.get("out") is not None)
        return real(*args, **kw)

    monkeypatch.setattr(_op._core, "pool_backward", counting)
    x, o = torch.tensor([1, 2, 3, 1]), torch.tensor([0, 2])
    for sparse in (False, True):
        w = torch.randn(10, 4, requires_grad=True)
        RF.embedding_bag(x, w, o, mode="sum", sparse=sparse).sum().backward()
    assert calls == [True, False]
    # Only the per-sample weights need a gradient: the weight's is not computed.
    psw = torch.ones(4, requires_grad=True)
    RF.embedding_bag(x, torch.randn(10, 4), o, mode="sum", per_sample_weights=psw).sum().backward()
    assert calls == [True, False]
    assert psw.grad is not None


def test_sparse_gradient_has_torchs_layout_and_skips_padding() -> None:
    w = torch.randn(10, 4, requires_grad=True)
    x, o = torch.tensor([7, 2, 7, 3, 2]), torch.tensor([0, 2])
    kw = dict(mode="sum", sparse=True, padding_idx=3)
    (g,) = torch.autograd.grad(RF.embedding_bag(x, w, o, **kw).sum(), w)
    (want,) = torch.autograd.grad(torch.nn.functional.embedding_bag(x, w, o, **kw).sum(), w)
    assert g.is_sparse and g._indices().tolist() == [[7, 2, 7, 2]]
    assert g._indices().tolist() == want._indices().tolist()
    torch.testing.assert_close(g._values(), want._values())


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bfloat16_weights(mode: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(30, 24).bfloat16()
    x, o = torch.randint(0, 30, (20,)), torch.tensor([0, 5, 5, 12])
    with torch.no_grad():
        got = RF.embedding_bag(x, w, o, mode=mode)
        want = torch.nn.functional.embedding_bag(x, w.float(), o, mode=mode).bfloat16()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    if mode != "max":
        wg = w.clone().requires_grad_(True)
        RF.embedding_bag(x, wg, o, mode=mode).sum().backward()
        wt = w.float().requires_grad_(True)
        torch.nn.functional.embedding_bag(x, wt, o, mode=mode).sum().backward()
        assert wg.grad.dtype == torch.bfloat16
        torch.testing.assert_close(wg.grad.float(), wt.grad, rtol=1e-2, atol=1e-2)


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = rnn.EmbeddingBag(50, 8, mode="sum")
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: Any, o: Any) -> Any:
        return self.head(self.bag(x, o))


def _op_in(graph_module: Any) -> bool:
    return any("recengine.embedding_bag" in str(n.target) for n in graph_module.graph.nodes)


def test_compile_fullgraph_no_graph_break() -> None:
    torch.manual_seed(0)
    model = _Model()
    x, o = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2])
    graphs: list[Any] = []

    def backend(gm: Any, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(x, o), model(x, o))
    assert len(graphs) == 1 and _op_in(graphs[0])
    # Training through the compiled graph (aot_eager traces the backward too).
    model.zero_grad()
    torch.compile(model, fullgraph=True, backend="aot_eager")(x, o).sum().backward()
    got = model.bag.weight.grad.clone()
    model.zero_grad()
    model(x, o).sum().backward()
    torch.testing.assert_close(got, model.bag.weight.grad)


def test_export_keeps_the_op() -> None:
    torch.manual_seed(0)
    model = _Model().eval()
    x, o = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2])
    dims = {"x": {0: torch.export.Dim("L", min=2)}, "o": {0: torch.export.Dim("B", min=2)}}
    ep = torch.export.export(model, (x, o), dynamic_shapes=dims)
    assert _op_in(ep.graph_module)
    x2, o2 = torch.tensor([7, 8, 9, 1, 1, 2, 3]), torch.tensor([0, 1, 1, 4])
    torch.testing.assert_close(ep.module()(x2, o2), model(x2, o2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_modules_run_torchs_kernel() -> None:
    torch.manual_seed(0)
    ref = torch.nn.EmbeddingBag(1000, 16, mode="mean", sparse=True)
    mod = rnn.EmbeddingBag(1000, 16, mode="mean", sparse=True)
    mod.load_state_dict(ref.state_dict())
    ref, mod = ref.cuda(), mod.cuda()
    x = torch.randint(0, 1000, (50,), device="cuda")
    o = torch.tensor([0, 10, 30], device="cuda")
    a, b = ref(x, o), mod(x, o)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(ref.weight.grad.to_dense(), mod.weight.grad.to_dense())
    ebc = rnn.EmbeddingBagCollection(
        [rnn.EmbeddingBagConfig(100, 8, "t", feature_names=["f"])]).cuda()
    kjt = rnn.KeyedJaggedTensor(["f"], torch.tensor([1, 2, 3], device="cuda"),
                                lengths=torch.tensor([1, 2], device="cuda"))
    out = ebc(kjt).values()
    assert out.is_cuda and out.shape == (2, 8)
    out.sum().backward()
    assert ebc.embedding_bags["t"].weight.grad.is_cuda
