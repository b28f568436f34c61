"""``EmbeddingCollection.lookup`` is the per-table lookups, concatenated along columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import recengine
from conftest import assert_pooled_close
from hypothesis import given
from hypothesis import strategies as st
from recengine import EmbeddingCollection, EmbeddingTable

SPECS = [(100, 8, "fp32"), (50, 3, "int4"), (70, 17, "bf16"), (30, 1, "int8"), (40, 33, "fp16"),
         (20, 64, "int8"), (10, 7, "fp32")]


def make_collection(specs: list[tuple[int, int, str]], seed: int = 0) -> EmbeddingCollection:
    r = np.random.default_rng(seed)
    return EmbeddingCollection([
        EmbeddingTable(r.standard_normal((n, d)).astype(np.float32), dtype=dt)
        for n, d, dt in specs])


def per_table(coll: EmbeddingCollection, indices: list, lookups: list[dict]) -> np.ndarray:
    return np.concatenate([t.lookup(i, **kw) for t, i, kw in zip(coll, indices, lookups)],
                          axis=1)


@st.composite
def collection_cases(draw: st.DrawFn) -> dict[str, Any]:
    k = draw(st.integers(1, len(SPECS)))
    specs = draw(st.permutations(SPECS))[:k]
    batch = draw(st.integers(0, 12))
    mode = draw(st.sampled_from(["sum", "mean", "max"]))
    layout = draw(st.sampled_from(["lengths", "offsets", "offsets_last", "2d", "flat"]))
    weighted = mode == "sum" and layout != "2d" and draw(st.booleans())
    return dict(specs=specs, batch=batch, mode=mode, layout=layout, weighted=weighted,
                seed=draw(st.integers(0, 2**32 - 1)))


@given(collection_cases())
def test_collection_equals_per_table_lookups(case: dict[str, Any]) -> None:
    r = np.random.default_rng(case["seed"])
    coll = make_collection(case["specs"], case["seed"] % 1000)
    batch, mode, layout = case["batch"], case["mode"], case["layout"]
    idx_dtype = np.int32 if case["seed"] % 2 else np.int64
    indices, lookups, lengths_all = [], [], []
    for n, _, _ in case["specs"]:
        if layout == "2d":
            per = int(r.integers(0, 5))
            indices.append(r.integers(0, n, (batch, per)).astype(idx_dtype))
            lookups.append({"mode": mode})
            continue
        ln = r.integers(0, 6, batch)
        lengths_all.append(ln)
        indices.append(r.integers(0, n, int(ln.sum())).astype(idx_dtype))
        lookups.append({"lengths": ln, "mode": mode})
    weights = None
    if case["weighted"]:
        weights = [None if r.random() < 0.3 else r.uniform(-1, 1, i.size).astype(np.float32)
                   for i in indices]
        for kw, w in zip(lookups, weights):
            kw["weights"] = w
    expected = per_table(coll, indices, lookups)
    if layout in ("lengths", "2d"):
        got = coll.lookup(indices, lengths=None if layout == "2d" else lengths_all,
                          weights=weights, mode=mode)
    elif layout == "flat":
        flat = np.concatenate(indices) if indices else np.zeros(0, idx_dtype)
        got = coll.lookup(flat, lengths=np.stack(lengths_all), mode=mode,
                          weights=weights)
    else:
        offsets = [(np.cumsum(ln) - ln) for ln in lengths_all]
        last = layout == "offsets_last"
        if last:
            offsets = [np.append(o, i.size) for o, i in zip(offsets, indices)]
        got = coll.lookup(indices, offsets=offsets, weights=weights, mode=mode,
                          include_last_offset=last)
    total = sum(d for _, d, _ in case["specs"])
    assert got.shape == (batch, total) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    # and each column block against the reference
    cols = coll.column_offsets
    for t, (table, i, kw) in enumerate(zip(coll, indices, lookups)):
        assert_pooled_close(got[:, cols[t]:cols[t + 1]], table.to_numpy(), i, **kw)


def test_collection_flat_indices_with_lengths_matrix(restore_threads: None) -> None:
    recengine.set_num_threads(2)
    coll = make_collection(SPECS, 1)
    r = np.random.default_rng(2)
    batch = 300
    lengths = r.integers(0, 30, (len(SPECS), batch))
    per = [r.integers(0, n, int(ln.sum())) for (n, _, _), ln in zip(SPECS, lengths)]
    flat = np.concatenate(per)
    w_flat = r.uniform(-1, 1, flat.size).astype(np.float32)
    got = coll.lookup(flat, lengths=lengths)
    np.testing.assert_array_equal(
        got, per_table(coll, per, [{"lengths": ln} for ln in lengths]))
    got = coll.lookup(flat, lengths=lengths, weights=w_flat)
    ws = np.split(w_flat, np.cumsum([p.size for p in per])[:-1])
    np.testing.assert_array_equal(
        got, per_table(coll, per, [{"lengths": ln, "weights": w} for ln, w in zip(lengths, ws)]))
    # lengths as a list of arrays gives the same
    np.testing.assert_array_equal(coll.lookup(per, lengths=list(lengths), weights=ws), got)


def test_collection_properties() -> None:
    coll = make_collection(SPECS[:3])
    assert len(coll) == 3
    assert coll.dims == [8, 3, 17]
    assert coll.column_offsets == [0, 8, 11, 28]
    assert [t.dtype for t in coll.tables] == ["fp32", "int4", "bf16"]
    assert coll[1].dim == 3
    assert coll.nbytes == sum(t.nbytes for t in coll.tables)
    assert "3 tables" in repr(coll) and "[8, 3, 17]" in repr(coll)


def test_collection_of_arrays_and_docstring() -> None:
    c = EmbeddingCollection([np.eye(4, dtype=np.float32), np.arange(6.0).reshape(3, 2)])
    out = c.lookup([np.array([1, 2, 3]), np.array([2, 0])],
                   lengths=[np.array([2, 1]), np.array([1, 1])])
    np.testing.assert_array_equal(out, [[0, 1, 1, 0, 4, 5], [0, 0, 0, 1, 0, 1]])
    out = c.lookup([np.array([1, 2, 3]), np.array([2, 0])],
                   lengths=[np.array([2, 1]), np.array([1, 1])], mode="mean")
    np.testing.assert_array_equal(out, [[0, 0.5, 0.5, 0, 4, 5], [0, 0, 0, 1, 0, 1]])


def test_collection_errors() -> None:
    coll = make_collection(SPECS[:2])
    with pytest.raises(ValueError):
        EmbeddingCollection([])
    with pytest.raises(ValueError):  # different batch sizes
        coll.lookup([np.array([0, 1]), np.array([0])], lengths=[np.array([1, 1]), np.array([1])])
    with pytest.raises(ValueError):  # one table's arrays missing
        coll.lookup([np.array([0, 1])], lengths=[np.array([1, 1])])
    with pytest.raises(IndexError, match="77"):
        coll.lookup([np.array([0, 1]), np.array([0, 77])],
                    lengths=[np.array([1, 1]), np.array([1, 1])])
    with pytest.raises(ValueError):
        coll.lookup([np.array([0, 1]), np.array([0, 1])],
                    lengths=[np.array([1, 1]), np.array([1, 1])], mode="median")
    with pytest.raises(ValueError):
        coll.lookup([np.array([0, 1]), np.array([0, 1])],
                    lengths=[np.array([1, 1]), np.array([1, 1])],
                    weights=[np.ones(2, np.float32), None], mode="mean")
