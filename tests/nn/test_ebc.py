"""recengine.nn.EmbeddingBagCollection and KeyedJaggedTensor against per-table
torch.nn.EmbeddingBag: forward, backward (dense and sparse), weighted features, key order,
TorchRec-style inputs, and bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import recengine.nn as rnn  # noqa: E402
from recengine.nn import EmbeddingBagConfig, KeyedJaggedTensor, PoolingType  # noqa: E402


def _reference(ebc: Any, kjt: KeyedJaggedTensor) -> Any:
    """Torch's own kernel, one feature at a time."""
    outs = []
    for cfg in ebc.embedding_bag_configs():
        bag = ebc.embedding_bags[cfg.name]
        for f in cfg.feature_names:
            jt = kjt[f]
            psw = jt.weights_or_none() if ebc.is_weighted() else None
            outs.append(torch.nn.functional.embedding_bag(
                jt.values(), bag.weight, jt.offsets()[:-1], mode=cfg.pooling.value.lower(),
                per_sample_weights=psw, sparse=bag.sparse))
    return torch.cat(outs, dim=1)


@st.composite
def collections(draw: Any) -> tuple[Any, KeyedJaggedTensor]:
    n_tables = draw(st.integers(1, 4))
    weighted = draw(st.booleans())
    configs, features = [], []
    for t in range(n_tables):
        n_feat = draw(st.integers(1, 2))
        names = [f"f{t}_{k}" for k in range(n_feat)]
        features += names
        pooling = PoolingType.SUM if weighted else draw(st.sampled_from([PoolingType.SUM,
                                                                          PoolingType.MEAN]))
        configs.append(EmbeddingBagConfig(draw(st.integers(1, 40)),
                                          draw(st.sampled_from([1, 4, 8, 17])), f"t{t}",
                                          feature_names=names, pooling=pooling))
    sparse = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    ebc = rnn.EmbeddingBagCollection(configs, is_weighted=weighted, sparse=sparse)
    # Input keys in a shuffled order, plus one key no table uses.
    keys = draw(st.permutations([*features, "unused"]))
    batch = draw(st.integers(0, 6))
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    rows = {f: cfg.num_embeddings for cfg in configs for f in cfg.feature_names}
    rows["unused"] = 1000
    lengths = torch.tensor(draw(st.lists(st.integers(0, 5), min_size=len(keys) * batch,
                                         max_size=len(keys) * batch)), dtype=index_dtype)
    values = []
    for k, key in enumerate(keys):
        n = int(lengths[k * batch:(k + 1) * batch].sum())
        values.append(torch.randint(0, rows[key], (n,), dtype=index_dtype))
    v = torch.cat(values) if values else torch.zeros(0, dtype=index_dtype)
    w = torch.randn(v.shape) if weighted else None
    return ebc, KeyedJaggedTensor(keys, v, w, lengths=lengths, stride=batch)


@given(collections())
def test_forward_and_backward_equal_torch(case: tuple[Any, KeyedJaggedTensor]) -> None:
    ebc, kjt = case
    with torch.no_grad():
        out = ebc(kjt)
        want = _reference(ebc, kjt)
    names = [f for c in ebc.embedding_bag_configs() for f in c.feature_names]
    assert out.keys() == names
    assert out.length_per_key() == [c.embedding_dim for c in ebc.embedding_bag_configs()
                                    for _ in c.feature_names]
    torch.testing.assert_close(out.values(), want, rtol=1e-5, atol=1e-5)
    for name in names:
        assert out[name].shape == (kjt.stride(), out.length_per_key()[names.index(name)])

    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(0))
    ebc.zero_grad(set_to_none=True)
    ebc(kjt).values().backward(g)
    ours = {n: b.weight.grad for n, b in ebc.embedding_bags.items()}
    ebc.zero_grad(set_to_none=True)
    _reference(ebc, kjt).backward(g)
    for name, bag in ebc.embedding_bags.items():
        theirs, mine = bag.weight.grad, ours[name]
        if theirs is None or mine is None:
            # No lookups reached the table: one side may leave no gradient at all.
            for grad in (theirs, mine):
                assert grad is None or not grad.to_dense().any()
            continue
        assert mine.layout == theirs.layout
        torch.testing.assert_close(mine.to_dense(), theirs.to_dense(), rtol=1e-5, atol=1e-5)


def test_state_dict_keys_follow_torchrec() -> None:
    ebc = rnn.EmbeddingBagCollection([
        EmbeddingBagConfig(10, 4, "user", feature_names=["uid"]),
        EmbeddingBagConfig(20, 2, "item", feature_names=["iid", "hist"])])
    assert list(ebc.state_dict()) == ["embedding_bags.user.weight", "embedding_bags.item.weight"]
    bound = (1 / 10) ** 0.5
    assert ebc.embedding_bags["user"].weight.abs().max() <= bound


def test_in_place_updates_and_replaced_weights_are_seen() -> None:
    ebc = rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["f"])])
    kjt = KeyedJaggedTensor(["f"], torch.tensor([1, 2]), lengths=torch.tensor([2]))
    with torch.no_grad():
        before = ebc(kjt).values().clone()
        ebc.embedding_bags["t"].weight.add_(1.0)  # in place: the cached view sees it
        torch.testing.assert_close(ebc(kjt).values(), before + 2.0)
        ebc.embedding_bags["t"].weight = torch.nn.Parameter(torch.zeros(10, 4))  # new storage
        assert not ebc(kjt).values().any()


def test_weights_swapped_through_data_are_seen() -> None:
    ebc = rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["f"])])
    kjt = KeyedJaggedTensor(["f"], torch.tensor([1, 7]), lengths=torch.tensor([2]))
    weight = ebc.embedding_bags["t"].weight
    with torch.no_grad():
        ebc(kjt)
        weight.data = torch.ones(10, 4)  # the same Parameter, new storage
        torch.testing.assert_close(ebc(kjt).values(), torch.full((1, 4), 2.0))
        weight.data = weight.data[:5]  # the same address, fewer rows: id 7 is now out of range
        with pytest.raises(RuntimeError) as refused:  # torch's, caused by the core's
            ebc(kjt)
        assert isinstance(refused.value.__cause__, IndexError)
        weight.data = torch.ones(10, 4, dtype=torch.float64)  # not a core dtype: torch's kernel
        assert ebc(kjt).values().dtype == torch.float32  # float32, as TorchRec's .float()
        weight.data = torch.full((10, 4), 3.0)  # and back to the core
        torch.testing.assert_close(ebc(kjt).values(), torch.full((1, 4), 6.0))


def test_core_hold_checks_its_weights() -> None:
    from recengine import _core

    w = torch.nn.Parameter(torch.rand(6, 3))
    held = _core.KeyedTables([w], [w.detach()], ["fp32"], ["sum"])
    values, lengths = np.array([0, 5]), np.array([2])
    out = held.pool([w], [0], [0], values, lengths, 1)
    torch.testing.assert_close(torch.from_numpy(out), w.detach()[[0, 5]].sum(0, keepdim=True))
    assert held.current([w]) and len(held) == 1
    other = torch.nn.Parameter(w.detach().clone())
    assert not held.current([other]) and held.pool([other], [0], [0], values, lengths, 1) is None
    w.data = torch.rand(6, 3)
    assert not held.current([w]) and held.pool([w], [0], [0], values, lengths, 1) is None
    with pytest.raises(ValueError):
        _core.KeyedTables([w], [w.detach()], ["fp16"], ["sum"])  # float32 storage
    with pytest.raises(ValueError):
        _core.KeyedTables([w.t()], [w.detach().t()], ["fp32"], ["sum"])  # not contiguous
    with pytest.raises(ValueError):
        _core.KeyedTables([w], [torch.rand(6, 3)], ["fp32"], ["sum"])  # not an alias
    with pytest.raises(TypeError):
        _core.KeyedTables([w], [w.detach()], ["int8"], ["sum"])
    with pytest.raises(ValueError):
        _core.KeyedTables([w], [w.detach()], ["fp32"], ["median"])
    held = _core.KeyedTables([w], [w.detach()], ["fp32"], ["sum"])
    with pytest.raises(IndexError):
        held.pool([w], [0], [0], np.array([0, 6]), lengths, 1)
    with pytest.raises(ValueError):
        held.pool([w], [1], [0], values, lengths, 1)


def test_torchrec_style_input_is_accepted() -> None:
    class TorchrecLike:
        """The accessors a torchrec.sparse.jagged_tensor.KeyedJaggedTensor has."""

        def keys(self) -> list[str]:
            return ["f"]

        def values(self) -> Any:
            return torch.tensor([1, 2, 3])

        def lengths(self) -> Any:
            return torch.tensor([1, 2])

        def weights_or_none(self) -> None:
            return None

        def stride(self) -> int:
            return 2

    ebc = rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["f"])])
    with torch.no_grad():
        want = ebc(KeyedJaggedTensor(["f"], torch.tensor([1, 2, 3]),
                                     lengths=torch.tensor([1, 2])))
        torch.testing.assert_close(ebc(TorchrecLike()).values(), want.values())
    with pytest.raises(TypeError):
        ebc({"f": torch.tensor([1])})


def test_kjt_accessors() -> None:
    kjt = KeyedJaggedTensor.from_offsets_sync(["a", "b"], torch.tensor([5, 6, 7, 8]),
                                              torch.tensor([0, 1, 1, 3, 4]))
    assert kjt.stride() == 2 and kjt.length_per_key() == [1, 3]
    assert kjt.lengths().tolist() == [1, 0, 2, 1] and kjt.offset_per_key() == [0, 1, 4]
    assert kjt["b"].values().tolist() == [6, 7, 8]
    assert kjt["b"].offsets().tolist() == [0, 2, 3]
    again = KeyedJaggedTensor.from_jt_dict(kjt.to_dict())
    assert again.keys() == ["a", "b"] and torch.equal(again.values(), kjt.values())
    # As TorchRec's, construction only stores: a bad one raises when it is used.
    with pytest.raises(ValueError, match="neither lengths nor offsets"):
        KeyedJaggedTensor(["a"], torch.tensor([1])).lengths()
    with pytest.raises(ValueError, match="3 lengths for 2 keys"):
        KeyedJaggedTensor(["a", "b"], torch.tensor([1]), lengths=torch.tensor([1, 0, 0])).sync()
    with pytest.raises(ValueError, match="integer type"):  # float lengths: at construction
        KeyedJaggedTensor(["a"], torch.tensor([1]), lengths=torch.tensor([1.0]))
    with pytest.raises(ValueError):
        kjt.weights()
    # Derived tensors stay on the input's device.
    meta = KeyedJaggedTensor(["a"], torch.zeros(3, dtype=torch.long, device="meta"),
                             lengths=torch.zeros(2, dtype=torch.long, device="meta"))
    assert meta.offsets().device.type == "meta"
    jt = rnn.JaggedTensor(meta.values(), lengths=meta.lengths())
    assert jt.offsets().device.type == "meta"


@pytest.mark.parametrize(
    "keys, values, lengths, error",
    [
        # torch's exception, as TorchRec's collection raises, caused by the core's
        (["f"], [1, 99], [1, 1], RuntimeError),  # id past the table
        (["f"], [1, -1], [1, 1], RuntimeError),  # negative id
        (["g"], [1, 2], [1, 1], ValueError),  # the table's feature is missing
        (["f"], [1, 2], [3, -1], RuntimeError),  # negative length
    ],
)
def test_bad_input(keys: list[str], values: list[int], lengths: list[int], error: type) -> None:
    ebc = rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["f"])])
    kjt = KeyedJaggedTensor(keys, torch.tensor(values), lengths=torch.tensor(lengths))
    for grad in (False, True):
        with torch.set_grad_enabled(grad), pytest.raises(error) as refused:
            ebc(kjt)
        if error is RuntimeError:
            assert isinstance(refused.value.__cause__, (IndexError, ValueError))


def test_bad_configs() -> None:
    with pytest.raises(ValueError):
        EmbeddingBagConfig(0, 4, "t", feature_names=["a"])
    with pytest.raises(ValueError, match="Duplicate table name t"):
        rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["a"]),
                                    EmbeddingBagConfig(10, 4, "t", feature_names=["b"])])
    with pytest.raises(ValueError, match="Unsupported pooling type"):
        rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["a"],
                                                       pooling="none")])
    with pytest.raises(NotImplementedError, match="use_virtual_table"):
        EmbeddingBagConfig(10, 4, "t", use_virtual_table=True)
    # Weights in a MEAN table: refused when the forward meets them, by torch (as TorchRec).
    mean = rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["a"],
                                                          pooling="mean")], is_weighted=True)
    with pytest.raises(NotImplementedError, match="only supported for mode='sum'"):
        mean(KeyedJaggedTensor(["a"], torch.tensor([1]), torch.tensor([0.5]),
                               lengths=torch.tensor([1])))
    weighted = rnn.EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", feature_names=["a"])],
                                          is_weighted=True)
    with pytest.raises(ValueError, match="no weights"):
        weighted(KeyedJaggedTensor(["a"], torch.tensor([1]), lengths=torch.tensor([1])))


def test_half_precision_tables_run_on_the_core() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        ebc = rnn.EmbeddingBagCollection([EmbeddingBagConfig(30, 8, "t", feature_names=["f"],
                                                              dtype=dtype)])
        kjt = KeyedJaggedTensor(["f"], torch.randint(0, 30, (9,)),
                                lengths=torch.tensor([4, 0, 5]))
        with torch.no_grad():
            out = ebc(kjt).values()
            w = ebc.embedding_bags["t"].weight.float()
            want = torch.nn.functional.embedding_bag(kjt.values(), w, torch.tensor([0, 4, 4]),
                                                     mode="sum")
        assert out.dtype == torch.float32  # TorchRec's output dtype for every table
        torch.testing.assert_close(out, want, rtol=1e-2, atol=1e-2)


def test_many_tables_one_core_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from recengine.nn import collection

    calls: list[int] = []
    real = collection._core.KeyedTables

    class Counting:
        """The core's hold, counting its pooling calls."""

        def __init__(self, *args: Any) -> None:
            self.inner = real(*args)

        def current(self, weights: Any) -> bool:
            return bool(self.inner.current(weights))

        def pool(self, *args: Any) -> Any:
            calls.append(1)
            return self.inner.pool(*args)

    def no_torch(*args: Any, **kw: Any) -> Any:
        raise AssertionError("torch's kernel ran")

    monkeypatch.setattr(collection._core, "KeyedTables", Counting)
    monkeypatch.setattr(torch.nn.functional, "embedding_bag", no_torch)
    configs = [EmbeddingBagConfig(50, 8, f"t{t}", feature_names=[f"f{t}"]) for t in range(6)]
    ebc = rnn.EmbeddingBagCollection(configs)
    rng = np.random.default_rng(0)
    kjt = KeyedJaggedTensor([f"f{t}" for t in range(6)],
                            torch.from_numpy(rng.integers(0, 50, 6 * 4 * 3)),
                            lengths=torch.full((24,), 3))
    with torch.no_grad():
        assert ebc(kjt).values().shape == (4, 48)
        assert calls == [1]
        ebc(kjt)
    assert calls == [1, 1]


def test_convert_replaces_a_torchrec_collection() -> None:
    # torchrec is not a dependency: a stand-in with the public surface convert reads, under
    # torchrec's module name, shows the swap and the shared weights.
    class EmbeddingBagCollection(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding_bags = torch.nn.ModuleDict({
                "t": torch.nn.EmbeddingBag(10, 4, mode="sum", include_last_offset=True)})

        def embedding_bag_configs(self) -> list[Any]:
            return [EmbeddingBagConfig(10, 4, "t", feature_names=["f"], pooling=PoolingType.SUM)]

        def is_weighted(self) -> bool:
            return False

    EmbeddingBagCollection.__module__ = "torchrec.modules.embedding_modules"
    model = torch.nn.Sequential(EmbeddingBagCollection())
    weight = model[0].embedding_bags["t"].weight
    rnn.convert(model)
    assert type(model[0]) is rnn.EmbeddingBagCollection
    assert model[0].embedding_bags["t"].weight is weight
    kjt = KeyedJaggedTensor(["f"], torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 2]))
    with torch.no_grad():
        want = torch.nn.functional.embedding_bag(kjt.values(), weight, torch.tensor([0, 1]),
                                                 mode="sum")
        torch.testing.assert_close(model[0](kjt).values(), want)


def test_fx_tracing_records_the_pooling() -> None:
    ebc = rnn.EmbeddingBagCollection(
        [EmbeddingBagConfig(10, 3, "t1", feature_names=["f1", "f3"]),
         EmbeddingBagConfig(10, 4, "t2", feature_names=["f2"], pooling="mean")])
    gm = torch.fx.symbolic_trace(ebc)
    kjt = KeyedJaggedTensor.from_offsets_sync(
        ["f1", "f3", "f2"], torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 1, 3, 4, 7]),
        torch.tensor([0, 2, 4, 6, 8, 10, 12]))
    traced, eager = gm(kjt), ebc(kjt)
    assert traced.keys() == eager.keys() == ["f1", "f3", "f2"]
    torch.testing.assert_close(traced.values(), eager.values())
    # Jagged helpers are graph nodes too: a function building a JaggedTensor traces.
    fn = torch.fx.symbolic_trace(
        lambda v, n: rnn.JaggedTensor.from_dense_lengths(v, n).values())
    assert fn(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([1, 2])).tolist() == [1, 4, 5]


def test_pytree_round_trips() -> None:
    from torch.utils import _pytree as pytree

    kjt = KeyedJaggedTensor(["a", "b"], torch.tensor([1, 2, 3]), torch.tensor([0.5, 1.0, 2.0]),
                            lengths=torch.tensor([1, 0, 2, 0]))
    kt = rnn.KeyedTensor(["x", "y"], [1, 2], torch.arange(6.0).reshape(2, 3))
    jt = rnn.JaggedTensor(torch.tensor([7, 8]), lengths=torch.tensor([2]))
    leaves, spec = pytree.tree_flatten({"kjt": kjt, "kt": kt, "jt": jt})
    assert all(isinstance(leaf, torch.Tensor) for leaf in leaves if leaf is not None)
    back = pytree.tree_unflatten(leaves, spec)
    assert back["kjt"].keys() == ["a", "b"] and torch.equal(back["kjt"].weights(), kjt.weights())
    assert back["kt"].keys() == ["x", "y"] and torch.equal(back["kt"]["y"], kt["y"])
    assert torch.equal(back["jt"].values(), jt.values())


def test_a_weight_replaced_by_a_view_of_the_same_memory_is_read_anew() -> None:
    # A transpose of a square table keeps the address and the shape: only its strides say
    # that the rows moved.
    ebc = rnn.EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name="t", embedding_dim=8, num_embeddings=8, feature_names=["f"])])
    kjt = KeyedJaggedTensor(keys=["f"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
    w = ebc.embedding_bags["t"].weight
    with torch.no_grad():
        ebc(kjt)
        w.data = w.data.t()
        want = torch.nn.functional.embedding_bag(torch.tensor([1, 2]), w, torch.tensor([0, 1]))
        assert torch.equal(ebc(kjt).values(), want)
        w.data = w.data.t().contiguous().view(torch.bfloat16)[:, :8].contiguous()
        assert torch.equal(ebc(kjt).values(), torch.nn.functional.embedding_bag(
            torch.tensor([1, 2]), w, torch.tensor([0, 1])).float())


def test_a_collection_refuses_input_naming_a_feature_twice() -> None:
    # Which of the two would it pool? (The KJT itself follows TorchRec, which allows repeated
    # keys, as a permute makes them, and looks keys up by their last position.)
    kjt = KeyedJaggedTensor(keys=["f", "f"], values=torch.tensor([1, 2]),
                            lengths=torch.tensor([1, 1]))
    ebc = rnn.EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name="t", embedding_dim=4, num_embeddings=8, feature_names=["f"])])
    with pytest.raises(ValueError, match="more than once"):
        ebc(kjt)
    ok = KeyedJaggedTensor(keys=["f", "g"], values=torch.tensor([1, 2]),
                           lengths=torch.tensor([1, 1]))
    assert ok.permute([0, 0, 1]).keys() == ["f", "f", "g"]
