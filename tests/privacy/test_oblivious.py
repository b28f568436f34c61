"""The oblivious lookups (scan, Path ORAM, padding): bit for bit the plain lookup's output in
every format and mode, visible traces that do not follow the ids, the ORAM's stash bound,
and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import recengine as rc
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.privacy import record
from recengine.table import Pad

DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")
HOW = ("scan", "oram", "pad", "pad3", "pad_popular")


def _how(how: str, rows: int) -> object:
    if how == "pad3":
        return Pad(count=3, seed=0)
    if how == "pad_popular":
        return Pad(count=4, popularity=np.arange(rows) + 1.0, seed=0)
    return how


def _table(rows: int, dim: int, dtype: str, seed: int = 0) -> rc.EmbeddingTable:
    t = rc.EmbeddingTable(np.random.default_rng(seed).standard_normal((rows, dim),
                                                                      dtype=np.float32))
    return t if dtype == "fp32" else t.quantize(dtype)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), dim=st.integers(1, 17), dtype=st.sampled_from(DTYPES),
       mode=st.sampled_from(["sum", "mean", "max"]), weighted=st.booleans(),
       lengths=st.lists(st.integers(0, 6), min_size=1, max_size=6), how=st.sampled_from(HOW),
       data=st.data())
def test_every_mode_equals_the_plain_lookup_bit_for_bit(rows: int, dim: int, dtype: str,
                                                        mode: str, weighted: bool,
                                                        lengths: list[int], how: str,
                                                        data: st.DataObject) -> None:
    t = _table(rows, dim, dtype)
    n = sum(lengths)
    ids = np.array(data.draw(st.lists(st.integers(0, rows - 1), min_size=n, max_size=n)),
                   dtype=np.int64)
    w = (np.random.default_rng(1).standard_normal(n).astype(np.float32)
         if weighted and mode == "sum" else None)
    lens = np.array(lengths, dtype=np.int64)
    plain = t.lookup(ids, lengths=lens, weights=w, mode=mode)
    got = t.lookup(ids, lengths=lens, weights=w, mode=mode, oblivious=_how(how, rows))
    assert plain.view(np.uint32).tolist() == got.view(np.uint32).tolist()
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int32)
    again = t.lookup(ids.astype(np.int32), offsets=offsets, weights=w, mode=mode,
                     oblivious=_how(how, rows))
    assert np.array_equal(again.view(np.uint32), plain.view(np.uint32))


def test_the_scan_trace_does_not_depend_on_the_ids() -> None:
    t = _table(30, 4, "fp32")
    traces = []
    for ids in (np.array([1, 2, 3, 4]), np.array([29, 29, 0, 7])):
        with record() as rec:
            t.lookup(ids.reshape(2, 2), oblivious="scan")
        traces.append([(a.table, a.rows.tolist(), a.lengths.tolist()) for a in rec.accesses])
    assert traces[0] == traces[1] == [("table0", list(range(30)), [30])]
    with record() as rec:  # the plain lookup gives them away
        t.lookup(np.array([[29, 29]]))
    assert rec.accesses[0].rows.tolist() == [29, 29]


def test_oblivious_errors_are_clear() -> None:
    t = _table(10, 4, "int8")
    with pytest.raises(IndexError, match=r"index 10 at position 2 \(bag 1"):
        t.lookup(np.array([1, 2, 10]), lengths=np.array([2, 1]), oblivious="scan")
    with pytest.raises(IndexError, match="index -1"):
        t.lookup(np.array([-1]), lengths=np.array([1]), oblivious="scan")
    with pytest.raises(ValueError, match="padding_idx"):
        t.lookup(np.array([1]), lengths=np.array([1]), padding_idx=0, oblivious="scan")
    with pytest.raises(ValueError, match="oblivious must be"):
        t.lookup(np.array([1]), lengths=np.array([1]), oblivious="shuffle")
    for how in ("scan", "oram", "pad"):
        with pytest.raises(IndexError, match=r"index 10 at position 2 \(bag 1"):
            t.lookup(np.array([1, 2, 10]), lengths=np.array([2, 1]), oblivious=how)
        with pytest.raises(ValueError, match="sum"):
            t.lookup(np.array([1]), lengths=np.array([2]), oblivious=how)
        with pytest.raises(TypeError):
            t.lookup(np.array([1.5]), lengths=np.array([1]), oblivious=how)
        empty = t.lookup(np.zeros(0, dtype=np.int64), lengths=np.array([0, 0]), oblivious=how)
        assert empty.shape == (2, 4) and not empty.any()
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="count must be"):
            Pad(count=bad)
    for bad in ([1.0, -1.0], [0.0, 0.0], [np.nan, 1.0], []):
        with pytest.raises(ValueError, match="popularity"):
            Pad(popularity=bad)
    with pytest.raises(ValueError, match="popularity has 3 rows, the table 10"):
        t.lookup(np.array([1]), lengths=np.array([1]), oblivious=Pad(2, popularity=[1, 2, 3]))
    with pytest.raises(ValueError, match="slot 0 reads row 2, not its id 1"):
        t._t.lookup_padded(np.array([1]), np.array([2]), np.array([0]), lengths=np.array([1]))
    with pytest.raises(ValueError, match="lookup 0 has no read"):
        t._t.lookup_padded(np.array([1]), np.array([2]), np.array([1]), lengths=np.array([1]))


def test_oram_paths_do_not_follow_the_ids() -> None:
    """One random path a lookup: a row read again and again and rows read once each give the
    same number of paths, uniform over the leaves, never re-reading the last path more than
    chance would."""
    t = _table(3000, 4, "fp16")
    leaves = 2 ** (t.oram(seed=3).levels[0] - 1)
    traces = []
    for ids in (np.full(2000, 17), np.random.default_rng(0).permutation(3000)[:2000]):
        with record() as rec:
            t.lookup(ids.reshape(-1, 4), oblivious="oram")
        (a,) = rec.accesses
        assert a.lengths.tolist() == [2000]
        traces.append(a.rows)
        counts = np.bincount(a.rows * 8 // leaves, minlength=8)
        chi2 = (((counts - 250.0) ** 2) / 250.0).sum()
        assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001
        assert (np.diff(a.rows) == 0).sum() < 10
    assert traces[0].shape == traces[1].shape and not np.array_equal(*traces)


def test_oram_stash_stays_far_below_its_bound() -> None:
    t = _table(5000, 2, "fp32")
    o = t.oram(seed=4)
    ids = np.random.default_rng(1).integers(0, 5000, 20_000)
    for chunk in np.split(ids, 10):
        t.lookup(chunk, lengths=np.array([chunk.size]), oblivious="oram")
    assert len(o.stash_max) == len(o.levels) == 2
    assert max(o.stash_max) < 40 < rc._core.ORAM_STASH_LIMIT
    assert o.nbytes > t.nbytes


def test_padding_hides_bag_sizes_and_flattens_rates() -> None:
    t = _table(50, 4, "fp32")
    seen = []
    for lens in ([1, 3, 0, 2], [2, 2, 2, 0]):
        ids = np.arange(sum(lens)) % 50
        with record() as rec:
            t.lookup(ids, lengths=np.array(lens), oblivious=Pad(count=4, seed=0))
        (a,) = rec.accesses
        seen.append(a.lengths.tolist())
        assert a.rows.size == 16 and set(ids.tolist()) <= set(a.rows.tolist())
    assert seen[0] == seen[1] == [4, 4, 4, 4]
    # Longer bags read the next multiple of count; count=None the next power of two.
    reads, slots, lens = Pad(count=4, seed=0).plan(np.zeros(9, np.int64), np.array([9]), 50)
    assert lens.tolist() == [12] and (slots == 9).sum() == 3
    _, _, lens = Pad(seed=0).plan(np.zeros(6, np.int64), np.array([5, 1]), 50)
    assert lens.tolist() == [8, 8]
    # Popularity-shaped dummies: a bag of one real read lifts every rare row to the floor.
    p = np.r_[np.full(5, 0.15), np.full(45, 0.25 / 45)]
    pad = Pad(count=4, popularity=p, seed=2)
    tau = pad.floor()
    assert tau is not None and 0.25 / 45 < tau < 0.15
    rng = np.random.default_rng(3)
    real = rng.choice(50, size=20_000, p=p)
    reads, _, _ = pad.plan(real, np.ones(real.size, np.int64), 50)
    rate = np.bincount(reads, minlength=50) / real.size
    assert np.allclose(rate[5:], tau, rtol=0.1) and np.allclose(rate[:5], 0.15, rtol=0.1)


@pytest.mark.parametrize("how", ["scan", "oram", "pad", [None, "oram"]])
def test_collections_read_every_table_obliviously(how: object) -> None:
    tables = [_table(40, 3, "fp32", 1), _table(25, 5, "int8", 2)]
    c = rc.EmbeddingCollection(tables)
    ids = [np.array([1, 39, 7]), np.array([0, 24, 24])]
    lens = [np.array([2, 1]), np.array([1, 2])]
    plain = c.lookup(ids, lengths=lens)
    with record() as rec:
        got = c.lookup(ids, lengths=lens, oblivious=how)
    assert np.array_equal(got.view(np.uint32), plain.view(np.uint32))
    assert len(rec.accesses) == 2  # each table noted once, as its mode shows it
    if how == "scan":
        assert [a.rows.size for a in rec.accesses] == [40, 25]
    with pytest.raises(ValueError, match="oblivious has 1 entries for 2 tables"):
        c.lookup(ids, lengths=lens, oblivious=["scan"])


@pytest.mark.parametrize("how", ["scan", "oram", "pad"])
def test_the_torch_module_reads_obliviously_for_inference(how: str) -> None:
    torch = pytest.importorskip("torch")
    from recengine.nn import EmbeddingBag

    torch.manual_seed(0)
    for mode in ("sum", "mean", "max"):
        bag = EmbeddingBag(300, 6, mode=mode, oblivious=how)
        plain = EmbeddingBag(300, 6, mode=mode, _weight=bag.weight.detach().clone())
        ref = torch.nn.EmbeddingBag.from_pretrained(bag.weight.detach().clone(), mode=mode)
        x, off = torch.randint(0, 300, (10,)), torch.tensor([0, 4, 4, 9])
        with torch.no_grad():
            for args in ((x, off), (x.reshape(2, 5),)):
                got = bag(*args)
                assert torch.equal(got, plain(*args))  # bit for bit recengine's plain lookup
                assert torch.allclose(got, ref(*args), atol=1e-6)
    with pytest.raises(RuntimeError, match="serves inference"):
        bag(x, off)
    with torch.no_grad():  # an in-place change of the weight is seen at the next forward
        before = bag(x, off)
        bag.weight[x[0]] += 1.0
        assert not torch.equal(bag(x, off), before)
    with pytest.raises(ValueError, match="oblivious must be"):
        EmbeddingBag(5, 2, oblivious="shuffle")
    with pytest.raises(ValueError, match="padding_idx"), torch.no_grad():
        EmbeddingBag(5, 2, padding_idx=0, oblivious=how)(torch.tensor([[1]]))


@pytest.mark.parametrize("how", ["scan", "oram", "pad"])
def test_the_torchrec_collection_reads_obliviously_for_inference(how: str) -> None:
    torch = pytest.importorskip("torch")
    from recengine.nn import (
        EmbeddingBagCollection,
        EmbeddingBagConfig,
        KeyedJaggedTensor,
        PoolingType,
    )

    torch.manual_seed(1)
    configs = [EmbeddingBagConfig(60, 4, "t1", feature_names=["f1"]),
               EmbeddingBagConfig(30, 3, "t2", feature_names=["f2", "f3"],
                                  pooling=PoolingType.MEAN)]
    plain = EmbeddingBagCollection(configs)
    safe = EmbeddingBagCollection(configs, oblivious=how)
    safe.load_state_dict(plain.state_dict())
    kjt = KeyedJaggedTensor(["f1", "f2", "f3"], torch.tensor([1, 59, 3, 29, 5, 6, 0]),
                            lengths=torch.tensor([2, 0, 1, 2, 1, 1]))
    with torch.no_grad(), record() as rec:
        got, want = safe(kjt), plain(kjt)
    assert got.keys() == want.keys() and torch.allclose(got.values(), want.values(), atol=1e-6)
    assert len(rec.accesses) == 6  # the safe collection's 3 features, then the plain's 3
    if how == "scan":
        assert [a.rows.size for a in rec.accesses[:3]] == [60, 30, 30]
    with pytest.raises(RuntimeError, match="serves inference"):
        safe(kjt)
    with pytest.raises(ValueError, match="oblivious must be"):
        EmbeddingBagCollection(configs, oblivious="shuffle")


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_the_quantized_module_reads_its_packed_rows_obliviously(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    from recengine.nn import QuantEmbeddingBag

    torch.manual_seed(2)
    q = QuantEmbeddingBag.from_float(torch.nn.EmbeddingBag(200, 6, mode="sum"), dtype=dtype)
    x, off = torch.randint(0, 200, (9,)), torch.tensor([0, 2, 2, 7])
    plain = q(x, off), q(x.reshape(3, 3))
    for how in ("scan", "oram", "pad"):
        q.oblivious = how
        with record() as rec:
            got = q(x, off), q(x.reshape(3, 3))
        assert all(torch.equal(a, b) for a, b in zip(got, plain))
        if how == "scan":
            assert [a.rows.size for a in rec.accesses] == [200, 200]
    assert "oblivious='pad'" in repr(q)
    with pytest.raises(RuntimeError, match="serves inference"):
        q(x, off, per_sample_weights=torch.ones(9, requires_grad=True))
    q.padding_idx = 0
    with pytest.raises(ValueError, match="padding_idx"):
        q(x, off)
