"""Conformance with TorchRec: recengine.nn's ``EmbeddingBagConfig``, ``EmbeddingBagCollection``,
``KeyedJaggedTensor``, ``JaggedTensor`` and ``KeyedTensor`` run side by side with TorchRec's over
the same inputs, and must give TorchRec's outputs, gradients, keys, dtypes and metadata.

TorchRec is an optional test dependency (``pip install --no-deps torchrec`` with
``fbgemm-gpu-cpu`` of the matching torch release): where it does not import, these tests skip.
The deliberate differences are listed in the README (and tested at the end here).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")

try:
    with warnings.catch_warnings():  # torchrec's import warns about optional FBGEMM parts
        warnings.simplefilter("ignore")
        import torchrec
        from torchrec.sparse import jagged_tensor as trj
except Exception as e:  # torchrec needs an FBGEMM build that loads with this torch
    if os.environ.get("RECENGINE_REQUIRE_TORCHREC"):  # .ci/torchrec: a skip would hide it
        raise
    pytest.skip(f"torchrec does not import here: {type(e).__name__}: {e}",
                allow_module_level=True)

import recengine.nn as rnn  # noqa: E402
from recengine.nn import jagged as rej  # noqa: E402

BOTH = [pytest.param((trj, torchrec), id="torchrec"), pytest.param((rej, rnn), id="recengine")]


def _tables(lib: Any) -> list[Any]:
    """The same tables in ``lib`` (torchrec or recengine.nn): a table read by two features, a
    feature read by two tables, a MEAN table, and a table with no feature names."""
    c = lib.EmbeddingBagConfig
    return [c(10, 3, "t1", feature_names=["f1", "f2"]),
            c(12, 4, "t2", feature_names=["f1"]),
            c(9, 2, "t3", feature_names=["f3"], pooling=lib.PoolingType.MEAN),
            c(7, 5, "t4")]


def _pair(tables: Callable[[Any], list[Any]] = _tables, **kw: Any) -> tuple[Any, Any]:
    """TorchRec's collection and ours with the same weights."""
    torch.manual_seed(0)
    theirs = torchrec.EmbeddingBagCollection(tables=tables(torchrec), **kw)
    ours = rnn.EmbeddingBagCollection(tables=tables(rnn), **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _kjt(lib: Any, keys: list[str], values: list[int], lengths: list[int],
         weights: Any = None, **kw: Any) -> Any:
    return lib.KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.tensor(values), lengths=torch.tensor(lengths),
        weights=None if weights is None else torch.tensor(weights), **kw)


FEATURES = (["f3", "f1", "t4", "f2", "unused"],  # keys in another order, one unused
            [1, 2, 8, 0, 3, 4, 5, 6, 6, 2, 1, 1, 2, 0, 6, 5],
            [2, 1, 0, 3, 1, 1, 2, 0, 1, 2, 1, 2, 0, 0, 0])


def _same_kt(ours: Any, theirs: Any) -> None:
    assert ours.keys() == theirs.keys()
    assert ours.length_per_key() == theirs.length_per_key()
    assert list(ours.offset_per_key()) == list(theirs.offset_per_key())
    assert ours.values().dtype == theirs.values().dtype
    torch.testing.assert_close(ours.values(), theirs.values())


# --------------------------------------------------------------------------------------------
# configs


def test_config_has_torchrecs_fields_order_and_defaults() -> None:
    theirs = {f.name: f for f in dataclasses.fields(torchrec.EmbeddingBagConfig)}
    ours = [f.name for f in dataclasses.fields(rnn.EmbeddingBagConfig)]
    assert ours[:len(theirs)] == list(theirs)
    a = torchrec.EmbeddingBagConfig(10, 4, "t", torchrec.DataType.FP16, ["x", "y"], 0.5, -0.5)
    b = rnn.EmbeddingBagConfig(10, 4, "t", rnn.DataType.FP16, ["x", "y"], 0.5, -0.5)
    for name in theirs:
        if name == "init_fn":
            continue
        va, vb = getattr(a, name), getattr(b, name)
        assert getattr(va, "name", va) == getattr(vb, "name", vb), name
    assert (a.get_weight_init_max(), a.get_weight_init_min(), a.num_features()) == \
        (b.get_weight_init_max(), b.get_weight_init_min(), b.num_features())
    c, d = torchrec.EmbeddingBagConfig(100, 4), rnn.EmbeddingBagConfig(100, 4)
    assert c.get_weight_init_max() == d.get_weight_init_max() == 0.1


# --------------------------------------------------------------------------------------------
# EmbeddingBagCollection


def test_collection_outputs_keys_and_gradients() -> None:
    theirs, ours = _pair()
    assert [c.feature_names for c in ours.embedding_bag_configs()] == \
        [c.feature_names for c in theirs.embedding_bag_configs()]  # t4 reads "t4"
    assert list(ours.state_dict()) == list(theirs.state_dict())
    kt_t = theirs(_kjt(trj, *FEATURES))
    kt_o = ours(_kjt(rej, *FEATURES))
    _same_kt(kt_o, kt_t)
    assert kt_o.keys() == ["f1@t1", "f2", "f1@t2", "f3", "t4"]
    g = torch.randn(kt_t.values().shape)
    (kt_t.values() * g).sum().backward()
    (kt_o.values() * g).sum().backward()
    for name, bag in theirs.embedding_bags.items():
        torch.testing.assert_close(ours.embedding_bags[name].weight.grad, bag.weight.grad)


def test_collection_out_of_range_ids() -> None:
    theirs, ours = _pair()
    keys, values, lengths = FEATURES
    bad = [*values[:8], 7, *values[9:]]  # id 7 of a 7-row table
    with pytest.raises(RuntimeError) as want:
        theirs(_kjt(trj, keys, bad, lengths))
    with pytest.raises(RuntimeError) as got:
        ours(_kjt(rej, keys, bad, lengths))
    assert str(got.value) == str(want.value)


def test_collection_weighted() -> None:
    def tables(lib: Any) -> list[Any]:
        return [lib.EmbeddingBagConfig(10, 3, "t1", feature_names=["f1", "f3"]),
                lib.EmbeddingBagConfig(10, 4, "t2", feature_names=["f2"])]

    theirs, ours = _pair(tables, is_weighted=True)
    keys, values = ["f1", "f3", "f2"], [1, 2, 4, 5, 4, 3, 2, 9, 1, 3, 4, 7]
    lengths = [2, 2, 2, 2, 2, 2]
    weights = [0.1, 0.2, 0.4, 0.5, 0.4, 0.3, 0.2, 0.9, 0.1, 0.3, 0.4, 0.7]
    _same_kt(ours(_kjt(rej, keys, values, lengths, weights)),
             theirs(_kjt(trj, keys, values, lengths, weights)))
    # Weights of another dtype than the tables': torch refuses them in both.
    w64 = [float(w) for w in weights]
    for mod, lib in ((theirs, trj), (ours, rej)):
        kjt = lib.KeyedJaggedTensor.from_lengths_sync(
            keys, torch.tensor(values), torch.tensor(lengths),
            weights=torch.tensor(w64, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="same type"):
            mod(kjt)


@pytest.mark.parametrize("data_type", ["FP16", "FP32"])
def test_collection_half_tables_give_float32(data_type: str) -> None:
    def tables(lib: Any) -> list[Any]:
        return [lib.EmbeddingBagConfig(50, 8, "t", getattr(lib.DataType, data_type),
                                       ["a", "b"])]

    theirs, ours = _pair(tables)
    assert ours.embedding_bags["t"].weight.dtype == theirs.embedding_bags["t"].weight.dtype
    gen = torch.Generator().manual_seed(3)
    values = torch.randint(0, 50, (60,), generator=gen).tolist()
    lengths = [7, 0, 13, 10, 20, 10]
    kt_t, kt_o = theirs(_kjt(trj, ["a", "b"], values, lengths)), \
        ours(_kjt(rej, ["a", "b"], values, lengths))
    _same_kt(kt_o, kt_t)
    assert kt_o.values().dtype == torch.float32
    g = torch.randn(kt_t.values().shape, generator=gen)
    (kt_t.values() * g).sum().backward()
    (kt_o.values() * g).sum().backward()
    torch.testing.assert_close(ours.embedding_bags["t"].weight.grad,
                               theirs.embedding_bags["t"].weight.grad)


def test_collection_variable_batch() -> None:
    def tables(lib: Any) -> list[Any]:
        return [lib.EmbeddingBagConfig(20, 3, "t1", feature_names=["a"]),
                lib.EmbeddingBagConfig(20, 2, "t2", feature_names=["b"],
                                       pooling=lib.PoolingType.MEAN)]

    theirs, ours = _pair(tables)
    # "a" has 2 distinct samples, "b" 3, expanded to a batch of 4 by the inverse indices.
    inverse = (["a", "b"], torch.tensor([[0, 1, 1, 0], [2, 0, 1, 2]]))
    args = (["a", "b"], [1, 2, 3, 4, 5, 6, 7], [2, 1, 1, 0, 3])
    kw = dict(stride_per_key_per_rank=[[2], [3]], inverse_indices=inverse)
    kjt_t, kjt_o = _kjt(trj, *args, **kw), _kjt(rej, *args, **kw)
    assert kjt_o.variable_stride_per_key() and kjt_o.stride() == kjt_t.stride() == 4
    assert kjt_o.stride_per_key() == kjt_t.stride_per_key() == [2, 3]
    _same_kt(ours(kjt_o), theirs(kjt_t))


def test_collection_meta_device_and_default_device() -> None:
    def tables(lib: Any) -> list[Any]:
        return [lib.EmbeddingBagConfig(10, 3, "t1", feature_names=["f1", "f3"]),
                lib.EmbeddingBagConfig(10, 4, "t2", feature_names=["f2"])]

    for lib, ns in ((trj, torchrec), (rej, rnn)):
        ebc = ns.EmbeddingBagCollection(tables(ns), is_weighted=True, device=torch.device("meta"))
        kjt = lib.KeyedJaggedTensor.from_offsets_sync(
            keys=["f1", "f3", "f2"], values=torch.arange(12, device="meta"),
            offsets=torch.tensor([0, 2, 4, 6, 8, 10, 12], device="meta"),
            weights=torch.ones(12, device="meta"))
        out = ebc(kjt)
        assert out.values().shape == (2, 10) and out.values().device.type == "meta"
        assert out.keys() == ["f1", "f3", "f2"] and list(out.offset_per_key()) == [0, 3, 6, 10]
        with torch.device("meta"):
            ebc = ns.EmbeddingBagCollection(tables(ns))
        assert ebc.device.type == "meta" == ebc.embedding_bags["t1"].weight.device.type
        assert ns.EmbeddingBagCollection(tables(ns)).device == torch.device("cpu")


def test_collection_refusals() -> None:
    def tables(lib: Any) -> list[Any]:
        return [lib.EmbeddingBagConfig(10, 3, "t", feature_names=["a"],
                                       pooling=lib.PoolingType.MEAN)]

    with pytest.raises(ValueError):
        torchrec.EmbeddingBagCollection(tables(torchrec) * 2)
    with pytest.raises(ValueError):
        rnn.EmbeddingBagCollection(tables(rnn) * 2)
    theirs, ours = _pair(tables, is_weighted=True)
    for mod, lib in ((theirs, trj), (ours, rej)):
        with pytest.raises(NotImplementedError, match="mode='sum'"):
            mod(_kjt(lib, ["a"], [1, 2], [1, 1], [0.5, 0.5]))


def test_fx_traced_collections_agree() -> None:
    from torchrec.fx import symbolic_trace

    theirs, ours = _pair()
    gm_t, gm_o = symbolic_trace(theirs), torch.fx.symbolic_trace(ours)
    _same_kt(gm_o(_kjt(rej, *FEATURES)), gm_t(_kjt(trj, *FEATURES)))


def test_converted_torchrec_collection_agrees() -> None:
    theirs = torchrec.EmbeddingBagCollection(tables=_tables(torchrec))
    ours = rnn.convert(theirs)
    assert type(ours) is rnn.EmbeddingBagCollection
    _same_kt(ours(_kjt(trj, *FEATURES)), theirs(_kjt(trj, *FEATURES)))


# --------------------------------------------------------------------------------------------
# KeyedJaggedTensor, JaggedTensor, KeyedTensor


def _kjts(weighted: bool, variable: bool) -> tuple[Any, Any]:
    keys = ["a", "b", "c"]
    values = list(range(10, 23))
    if variable:
        lengths, kw = [1, 2, 0, 3, 1, 4, 2], {"stride_per_key_per_rank": [[2], [3], [2]]}
    else:
        lengths, kw = [1, 2, 0, 3, 1, 4], {}
    weights = [0.5 * i for i in range(13)] if weighted else None
    if not variable:
        values = values[:11]
        weights = None if weights is None else weights[:11]
    return _kjt(trj, keys, values, lengths, weights, **kw), \
        _kjt(rej, keys, values, lengths, weights, **kw)


def _same_tensor(a: Any, b: Any) -> None:
    if a is None or b is None:
        assert a is None and b is None
    else:
        assert a.dtype == b.dtype and torch.equal(a, b), (a, b)


def _same_jt(ours: Any, theirs: Any) -> None:
    for name in ("values", "lengths", "offsets", "weights_or_none"):
        _same_tensor(getattr(ours, name)(), getattr(theirs, name)())


def _same_kjt(ours: Any, theirs: Any) -> None:
    assert ours.keys() == theirs.keys()
    for name in ("values", "lengths", "offsets", "weights_or_none"):
        _same_tensor(getattr(ours, name)(), getattr(theirs, name)())
    for name in ("stride", "stride_per_key", "stride_per_key_per_rank",
                 "variable_stride_per_key", "length_per_key", "offset_per_key",
                 "lengths_offset_per_key", "index_per_key"):
        assert getattr(ours, name)() == getattr(theirs, name)(), name
    assert list(ours.to_dict()) == list(theirs.to_dict())
    for key in theirs.keys():
        _same_jt(ours[key], theirs[key])
        _same_jt(ours.to_dict()[key], theirs.to_dict()[key])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("variable", [False, True])
def test_kjt_methods(weighted: bool, variable: bool) -> None:
    theirs, ours = _kjts(weighted, variable)
    _same_kjt(ours, theirs)
    assert str(ours) == str(theirs)
    for segments in ([1, 2], [3], [0, 3], [2, 0, 1]):
        for a, b in zip(ours.split(segments), theirs.split(segments)):
            _same_kjt(a, b)
    for indices in ([2, 0, 1], [1, 1], [0, 2]):
        _same_kjt(ours.permute(indices), theirs.permute(indices))
    _same_kjt(ours.flatten_lengths(), theirs.flatten_lengths())
    _same_kjt(ours.to(torch.device("cpu")), theirs.to(torch.device("cpu")))
    _same_kjt(rej.KeyedJaggedTensor.from_jt_dict(ours.to_dict()),
              trj.KeyedJaggedTensor.from_jt_dict(theirs.to_dict()))
    _same_kjt(rej.KeyedJaggedTensor.concat([ours.split([1, 2])[1], ours.split([1, 2])[0]]),
              trj.KeyedJaggedTensor.concat([theirs.split([1, 2])[1], theirs.split([1, 2])[0]]))
    assert ours.size_in_bytes() == theirs.size_in_bytes()


def test_kjt_from_offsets_and_empty() -> None:
    args = (["x", "y"], torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2, 2, 3, 4]))
    _same_kjt(rej.KeyedJaggedTensor.from_offsets_sync(*args),
              trj.KeyedJaggedTensor.from_offsets_sync(*args))
    for weighted in (False, True):
        a = rej.KeyedJaggedTensor.empty(is_weighted=weighted, values_dtype=torch.int64,
                                        weights_dtype=torch.float32)
        b = trj.KeyedJaggedTensor.empty(is_weighted=weighted, values_dtype=torch.int64,
                                        weights_dtype=torch.float32)
        _same_kjt(a, b)
        assert str(a) == str(b)


def test_jagged_tensor_methods() -> None:
    kw = dict(values=torch.tensor([1.0, 2.0, 3.0, 4.0]), lengths=torch.tensor([2, 0, 1, 1]),
              weights=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    a, b = rej.JaggedTensor(**kw), trj.JaggedTensor(**kw)
    _same_jt(a, b)
    assert str(a) == str(b)
    for x, y in zip(a.to_dense(), b.to_dense()):
        _same_tensor(x, y)
    for x, y in zip(a.to_dense_weights(), b.to_dense_weights()):
        _same_tensor(x, y)
    for length in (None, 1, 3):
        _same_tensor(a.to_padded_dense(length), b.to_padded_dense(length))
        _same_tensor(a.to_padded_dense_weights(length, 9.0),
                     b.to_padded_dense_weights(length, 9.0))
    dense = [torch.tensor([1, 2]), torch.tensor([], dtype=torch.int64), torch.tensor([3])]
    _same_jt(rej.JaggedTensor.from_dense(dense), trj.JaggedTensor.from_dense(dense))
    padded, lengths = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([1, 3])
    _same_jt(rej.JaggedTensor.from_dense_lengths(padded, lengths),
             trj.JaggedTensor.from_dense_lengths(padded, lengths))
    _same_jt(rej.JaggedTensor(torch.tensor([5, 6]), offsets=torch.tensor([0, 0, 2])),
             trj.JaggedTensor(torch.tensor([5, 6]), offsets=torch.tensor([0, 0, 2])))


def test_keyed_tensor_methods() -> None:
    tensors = [torch.randn(3, 2), torch.randn(3, 4), torch.randn(3, 1)]
    a = rej.KeyedTensor.from_tensor_list(["x", "y", "z"], tensors)
    b = trj.KeyedTensor.from_tensor_list(["x", "y", "z"], tensors)
    _same_kt(a, b)
    assert str(a) == str(b)
    for key in ("x", "y", "z"):
        _same_tensor(a[key], b[key])
        _same_tensor(a.to_dict()[key], b.to_dict()[key])
    c = rej.KeyedTensor(["u"], [3], torch.randn(3, 3))
    d = trj.KeyedTensor(["u"], [3], c.values())
    groups = [["y", "u"], ["x"], ["z", "x", "u"]]
    for x, y in zip(rej.KeyedTensor.regroup([a, c], groups),
                    trj.KeyedTensor.regroup([b, d], groups)):
        _same_tensor(x, y)
    ra = rej.KeyedTensor.regroup_as_dict([a, c], groups, ["g1", "g2", "g3"])
    rb = trj.KeyedTensor.regroup_as_dict([b, d], groups, ["g1", "g2", "g3"])
    assert list(ra) == list(rb)
    for key in ra:
        _same_tensor(ra[key], rb[key])
    rows = rej.KeyedTensor(["p", "q"], [1, 2], torch.arange(6.0).reshape(3, 2), key_dim=0)
    rows_t = trj.KeyedTensor(["p", "q"], [1, 2], rows.values(), key_dim=0)
    _same_tensor(rows["q"], rows_t["q"])


# --------------------------------------------------------------------------------------------
# the deliberate differences, as the README lists them


def test_deliberate_differences() -> None:
    # BF16 tables are bfloat16 here; TorchRec's collection makes every non-FP32 table float16.
    def bf16(lib: Any) -> list[Any]:
        return [lib.EmbeddingBagConfig(10, 4, "t", lib.DataType.BF16, ["a"])]

    assert torchrec.EmbeddingBagCollection(bf16(torchrec)).embedding_bags["t"].weight.dtype \
        == torch.float16
    assert rnn.EmbeddingBagCollection(bf16(rnn)).embedding_bags["t"].weight.dtype \
        == torch.bfloat16
    # Invalid jagged input raises JaggedError here, which is the AssertionError TorchRec
    # raises and a ValueError too.
    for lib in (trj, rej):
        with pytest.raises(AssertionError):
            lib.KeyedJaggedTensor(["a"], torch.tensor([1]), lengths=torch.tensor([1.0]))
    with pytest.raises(ValueError):
        rej.KeyedJaggedTensor(["a"], torch.tensor([1]), lengths=torch.tensor([1.0]))
