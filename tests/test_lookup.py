"""Differential tests of ``EmbeddingTable.lookup`` (and the array functions) against
``recengine.reference.pool_reference``, over every mode, storage dtype, index dtype, bag
description and SIMD level.

Quantized and half-precision tables are compared with the reference applied to their own
decoded rows (``table.to_numpy()``), so the only slack is float summation order; a separate
check bounds the quantisation error against fp32 pooling.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest
import recengine
from conftest import DIMS, assert_pooled_close, pooled_tolerance
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine import EmbeddingTable
from recengine.reference import (
    pool_reference,
    quantize_rowwise_reference,
    rowwise_error_bound_reference,
)

STORAGE = ("fp32", "fp16", "bf16", "int8", "int4")
MODES = ("sum", "mean", "max")
LAYOUTS = ("offsets", "offsets_last", "lengths", "2d")
EXACT_MAX = ("fp32", "fp16", "bf16")  # decoding is exact, so max must be bit-exact


def make_bags(layout: str, lengths: list[int], per_bag: int, index_dtype: type,
              rng: np.random.Generator, num_rows: int) -> tuple[np.ndarray, dict]:
    """Indices and the lookup keyword arguments that describe ``lengths`` in ``layout``."""
    if layout == "2d":
        idx = rng.integers(0, num_rows, (len(lengths), per_bag)).astype(index_dtype)
        return idx, {}
    ln = np.array(lengths, dtype=np.int64)
    idx = rng.integers(0, num_rows, int(ln.sum())).astype(index_dtype)
    starts = (np.cumsum(ln) - ln).astype(index_dtype)
    if layout == "lengths":
        return idx, {"lengths": ln.astype(index_dtype)}
    if layout == "offsets":
        return idx, {"offsets": starts}
    return idx, {"offsets": np.append(starts, idx.size).astype(index_dtype),
                 "include_last_offset": True}


@st.composite
def lookup_cases(draw: st.DrawFn) -> dict[str, Any]:
    dim = draw(st.one_of(st.sampled_from(DIMS), st.integers(1, 70)))
    max_rows = 300 if dim <= 128 else 40
    num_rows = draw(st.integers(1, max_rows))
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "2d":
        lengths = [0] * draw(st.integers(0, 12))
        per_bag = draw(st.integers(0, 9))
    else:
        lengths = draw(st.lists(st.integers(0, 14), max_size=16))
        per_bag = 0
    return dict(
        dim=dim, num_rows=num_rows, layout=layout, lengths=lengths, per_bag=per_bag,
        mode=draw(st.sampled_from(MODES)),
        index_dtype=draw(st.sampled_from([np.int32, np.int64])),
        weighted=draw(st.booleans()),
        padding=draw(st.sampled_from(["none", "row", "negative"])),
        pad_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])),
        scale=draw(st.sampled_from([1.0, 1e-3, 40.0])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def build_case(case: dict[str, Any], storage: str) -> tuple[EmbeddingTable, np.ndarray,
                                                            np.ndarray, dict]:
    """The table, its fp32 source values, the indices and the lookup kwargs for ``case``."""
    r = np.random.default_rng(case["seed"])
    n, d = case["num_rows"], case["dim"]
    x = (r.standard_normal((n, d)) * case["scale"]
         + r.standard_normal((n, 1)) * case["scale"]).astype(np.float32)
    table = EmbeddingTable(x, dtype=storage)
    idx, kw = make_bags(case["layout"], case["lengths"], case["per_bag"], case["index_dtype"], r,
                        n)
    pad: Optional[int] = None
    if case["padding"] != "none":
        pad = int(r.integers(0, n))
        flat = idx.reshape(-1)
        hit = r.random(flat.size) < case["pad_fraction"]
        flat[hit] = pad
        if case["padding"] == "negative":
            pad -= n
    kw["padding_idx"] = pad
    kw["mode"] = case["mode"]
    if case["weighted"] and case["mode"] == "sum":
        kw["weights"] = r.uniform(-2, 2, idx.shape).astype(np.float32)
    return table, x, idx, kw


def run_differential(case: dict[str, Any], storage: str) -> None:
    table, x, idx, kw = build_case(case, storage)
    assert table.dtype == storage
    out = table.lookup(idx, **kw)
    rows = table.to_numpy()
    assert rows.dtype == np.float32 and rows.shape == x.shape
    n_bags = idx.shape[0] if idx.ndim == 2 else len(case["lengths"])
    assert out.shape == (n_bags, case["dim"])
    assert out.flags.c_contiguous
    assert_pooled_close(out, rows, idx, **kw)
    if kw["mode"] == "max" and storage in EXACT_MAX:
        np.testing.assert_array_equal(out, pool_reference(rows, idx, **kw))
    if storage in ("int8", "int4"):
        check_quantization_error(out, x, rows, idx, kw, 8 if storage == "int8" else 4)


def check_quantization_error(out: np.ndarray, x: np.ndarray, rows: np.ndarray, idx: np.ndarray,
                             kw: dict, bits: int) -> None:
    """Quantized pooling is within ``sum_j |w_j| * bound_j`` of fp32 pooling (mean: / count;
    max: the largest bound in the bag), plus float slack."""
    exact = pool_reference(x, idx, **kw).astype(np.float64)
    bound_rows = rowwise_error_bound_reference(x, bits).astype(np.float32)[:, None]
    w = kw.get("weights")
    kw2 = {k: v for k, v in kw.items() if k not in ("weights", "mode")}
    if kw["mode"] == "max":
        bound = pool_reference(bound_rows, idx, mode="max", **kw2)
    else:
        bound = pool_reference(bound_rows, idx, mode=kw["mode"],
                               weights=None if w is None else np.abs(w), **kw2)
    tol = bound.astype(np.float64) * (1 + 1e-3) + pooled_tolerance(rows, idx, **kw)
    err = np.abs(out.astype(np.float64) - exact)
    assert (err <= tol).all(), float((err - tol).max())


@pytest.mark.parametrize("storage", STORAGE)
@given(case=lookup_cases())
def test_lookup_matches_reference(simd_level: str, storage: str, case: dict[str, Any]) -> None:
    run_differential(case, storage)


# ---------------------------------------------------------------------------------------------
# Deterministic sweeps: every interesting dim at every level, large bags, large batches


@pytest.mark.parametrize("storage", STORAGE)
def test_every_dim(simd_level: str, storage: str) -> None:
    r = np.random.default_rng(7)
    for dim in DIMS:
        n = 50
        x = r.uniform(-3, 3, (n, dim)).astype(np.float32)
        table = EmbeddingTable(x, dtype=storage)
        rows = table.to_numpy()
        lengths = np.array([0, 1, 2, 3, 7, 16, 33, 0, 5], np.int64)
        idx = r.integers(0, n, int(lengths.sum()))
        w = r.uniform(-1, 1, idx.size).astype(np.float32)
        for mode in MODES:
            out = table.lookup(idx, lengths=lengths, mode=mode)
            assert_pooled_close(out, rows, idx, lengths=lengths, mode=mode)
        out = table.lookup(idx, lengths=lengths, weights=w)
        assert_pooled_close(out, rows, idx, lengths=lengths, weights=w)
        out = table.lookup(idx, lengths=lengths, mode="mean", padding_idx=int(idx[3]))
        assert_pooled_close(out, rows, idx, lengths=lengths, mode="mean",
                            padding_idx=int(idx[3]))


@pytest.mark.parametrize("storage", STORAGE)
def test_dims_beyond_the_register_file(simd_level: str, storage: str) -> None:
    """Dims too wide to keep a whole output row in vector registers."""
    r = np.random.default_rng(12)
    for dim in (1025, 2049, 4099):
        table = EmbeddingTable(r.standard_normal((12, dim)).astype(np.float32), dtype=storage)
        rows = table.to_numpy()
        idx = r.integers(0, 12, 25)
        lengths = np.array([10, 0, 15])
        w = r.standard_normal(25).astype(np.float32)
        for mode in MODES:
            out = table.lookup(idx, lengths=lengths, mode=mode)
            assert_pooled_close(out, rows, idx, lengths=lengths, mode=mode)
        out = table.lookup(idx, lengths=lengths, weights=w, padding_idx=int(idx[0]))
        assert_pooled_close(out, rows, idx, lengths=lengths, weights=w, padding_idx=int(idx[0]))


@pytest.mark.parametrize("storage", STORAGE)
def test_one_huge_bag(simd_level: str, storage: str) -> None:
    r = np.random.default_rng(3)
    x = r.uniform(-1, 1, (1000, 33)).astype(np.float32)
    table = EmbeddingTable(x, dtype=storage)
    idx = r.integers(0, 1000, 20000).astype(np.int32)
    w = r.uniform(0, 1, idx.size).astype(np.float32)
    rows = table.to_numpy()
    for mode in MODES:
        out = table.lookup(idx, offsets=np.array([0], np.int32), mode=mode)
        assert_pooled_close(out, rows, idx, offsets=np.array([0]), mode=mode)
    out = table.lookup(idx, offsets=np.array([0], np.int32), weights=w)
    assert_pooled_close(out, rows, idx, offsets=np.array([0]), weights=w)


@pytest.mark.parametrize("storage", STORAGE)
def test_large_skewed_batch(simd_level: str, storage: str, restore_threads: None) -> None:
    """A batch big enough for the thread pool, with bag sizes from 0 to 500."""
    recengine.set_num_threads(2)
    r = np.random.default_rng(11)
    x = r.standard_normal((3000, 64)).astype(np.float32)
    table = EmbeddingTable(x, dtype=storage)
    lengths = np.where(r.random(1500) < 0.02, 500, r.integers(0, 20, 1500))
    idx = r.integers(0, 3000, int(lengths.sum()))
    w = r.standard_normal(idx.size).astype(np.float32)
    rows = table.to_numpy()
    for mode in MODES:
        out = table.lookup(idx, lengths=lengths, mode=mode)
        assert_pooled_close(out, rows, idx, lengths=lengths, mode=mode)
    out = table.lookup(idx, lengths=lengths, weights=w, padding_idx=5)
    assert_pooled_close(out, rows, idx, lengths=lengths, weights=w, padding_idx=5)


def test_levels_agree_on_fp32_max() -> None:
    """max mode is exact, so every SIMD level gives identical bits."""
    from recengine import _core

    r = np.random.default_rng(5)
    table = EmbeddingTable(r.standard_normal((200, 45)).astype(np.float32))
    idx = r.integers(0, 200, 300)
    lengths = r.multinomial(300, np.ones(20) / 20)
    results = []
    try:
        for level in _core.available_simd_levels():
            _core.set_simd_level(level)
            results.append(table.lookup(idx, lengths=lengths, mode="max"))
    finally:
        _core.set_simd_level(None)
    assert len(results) >= 1
    for res in results[1:]:
        np.testing.assert_array_equal(res, results[0])


# ---------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("mode", MODES)
def test_empty_and_zero(simd_level: str, storage: str, mode: str) -> None:
    table = EmbeddingTable(np.random.default_rng(0).standard_normal((10, 17)), dtype=storage)
    empty = np.array([], np.int64)
    # batch 0
    for out in (table.lookup(empty, offsets=empty, mode=mode),
                table.lookup(empty, lengths=empty, mode=mode),
                table.lookup(empty, offsets=np.array([0]), include_last_offset=True, mode=mode),
                table.lookup(np.zeros((0, 3), np.int64), mode=mode)):
        assert out.shape == (0, 17) and out.dtype == np.float32
    # zero lookups in several bags, and bags of n = 0 in 2-D
    np.testing.assert_array_equal(table.lookup(empty, lengths=np.zeros(4, np.int64), mode=mode),
                                  np.zeros((4, 17), np.float32))
    np.testing.assert_array_equal(table.lookup(empty, offsets=np.zeros(3, np.int64), mode=mode),
                                  np.zeros((3, 17), np.float32))
    np.testing.assert_array_equal(table.lookup(np.zeros((5, 0), np.int32), mode=mode),
                                  np.zeros((5, 17), np.float32))
    # bags holding only padding are zeros; padding does not count for mean
    out = table.lookup(np.array([3, 3, 3, 4]), lengths=np.array([2, 2]), padding_idx=3,
                       mode=mode)
    np.testing.assert_array_equal(out[0], np.zeros(17, np.float32))
    assert_pooled_close(out, table.to_numpy(), np.array([3, 3, 3, 4]), lengths=np.array([2, 2]),
                        padding_idx=3, mode=mode)


@pytest.mark.parametrize("storage", STORAGE)
def test_table_without_rows(storage: str) -> None:
    table = EmbeddingTable(np.zeros((0, 6), np.float32), dtype=storage)
    assert table.shape == (0, 6) and table.nbytes == 0
    assert table.to_numpy().shape == (0, 6)
    np.testing.assert_array_equal(table.lookup(np.array([], np.int64), lengths=[0, 0]),
                                  np.zeros((2, 6), np.float32))
    with pytest.raises(IndexError):
        table.lookup(np.array([0]), lengths=[1])


@pytest.mark.parametrize("storage", STORAGE)
def test_max_of_all_negative_rows(storage: str) -> None:
    x = -np.abs(np.random.default_rng(1).standard_normal((6, 9))).astype(np.float32) - 1.0
    table = EmbeddingTable(x, dtype=storage)
    out = table.lookup(np.array([[0, 1, 2], [3, 4, 5]]), mode="max")
    assert (out < 0).all()
    np.testing.assert_allclose(out, pool_reference(table.to_numpy(), np.array(
        [[0, 1, 2], [3, 4, 5]]), mode="max"), rtol=1e-6)


def test_repeated_index_and_single_row_table() -> None:
    table = EmbeddingTable(np.array([[1.5, -2.0, 3.0]], np.float32))
    out = table.lookup(np.zeros(7, np.int64), offsets=np.array([0, 3]))
    np.testing.assert_array_equal(out, [[4.5, -6, 9], [6, -8, 12]])
    out = table.lookup(np.zeros(7, np.int64), offsets=np.array([0, 3]), mode="mean")
    np.testing.assert_array_equal(out, [[1.5, -2, 3], [1.5, -2, 3]])


def test_weights_by_hand() -> None:
    table = EmbeddingTable(np.eye(3, dtype=np.float32) * np.array([1, 2, 3], np.float32))
    out = table.lookup(np.array([0, 1, 2, 2]), lengths=np.array([3, 1]),
                       weights=np.array([2, -1, 0.5, 4], np.float32))
    np.testing.assert_array_equal(out, [[2, -2, 1.5], [0, 0, 12]])


def test_two_d_weights_shape_of_indices() -> None:
    """With 2-D indices, per-sample weights have the shape of the indices, as in torch."""
    table = EmbeddingTable(np.arange(12, dtype=np.float32).reshape(4, 3))
    idx = np.array([[0, 1], [2, 3]])
    w = np.array([[1, 2], [0.5, -1]], np.float32)
    np.testing.assert_array_equal(table.lookup(idx, weights=w),
                                  pool_reference(table.to_numpy(), idx, weights=w))


def test_mixed_index_and_offset_dtypes() -> None:
    table = EmbeddingTable(np.arange(20, dtype=np.float32).reshape(5, 4))
    idx = np.array([0, 4, 2, 1])
    expected = pool_reference(table.to_numpy(), idx, offsets=np.array([0, 1]))
    for i_dt in (np.int32, np.int64):
        for o_dt in (np.int32, np.int64):
            out = table.lookup(idx.astype(i_dt), offsets=np.array([0, 1], o_dt))
            np.testing.assert_array_equal(out, expected)
            out = table.lookup(idx.astype(i_dt), lengths=np.array([1, 3], o_dt))
            np.testing.assert_array_equal(out, expected)


def test_lists_and_other_int_dtypes_are_accepted() -> None:
    table = EmbeddingTable(np.arange(20, dtype=np.float32).reshape(5, 4))
    expected = pool_reference(table.to_numpy(), [0, 4, 2, 1], lengths=[2, 2])
    np.testing.assert_array_equal(table.lookup([0, 4, 2, 1], lengths=[2, 2]), expected)
    for dt in (np.uint8, np.int16, np.uint32, np.uint64):
        out = table.lookup(np.array([0, 4, 2, 1], dt), lengths=np.array([2, 2], dt))
        np.testing.assert_array_equal(out, expected)
    w = [1, 2, 3, 4]
    np.testing.assert_array_equal(
        table.lookup([0, 4, 2, 1], lengths=[2, 2], weights=w),
        pool_reference(table.to_numpy(), [0, 4, 2, 1], lengths=[2, 2], weights=w))


def test_result_is_fresh_and_inputs_untouched() -> None:
    x = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    table = EmbeddingTable(x)
    idx = np.array([1, 2, 3])
    off = np.array([0, 1])
    w = np.array([1, 2, 3], np.float32)
    a = table.lookup(idx, offsets=off, weights=w)
    a[:] = 99
    b = table.lookup(idx, offsets=off, weights=w)
    assert not (b == 99).any()
    assert idx.tolist() == [1, 2, 3] and off.tolist() == [0, 1] and w.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(table.to_numpy(), x)
    x[:] = 0  # the table holds its own copy
    np.testing.assert_array_equal(table.lookup(idx, offsets=off, weights=w), b)


# ---------------------------------------------------------------------------------------------
# Functional forms on plain arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@given(case=lookup_cases())
def test_functional_matches_reference(simd_level: str, dtype: type, case: dict) -> None:
    r = np.random.default_rng(case["seed"])
    n, d = case["num_rows"], case["dim"]
    arr = (r.standard_normal((n, d)) * min(case["scale"], 100.0)).astype(dtype)
    rows = arr.astype(np.float32)
    ln = np.array(case["lengths"], np.int64)
    idx = r.integers(0, n, int(ln.sum())).astype(case["index_dtype"])
    w = r.standard_normal(idx.size).astype(np.float32) if case["weighted"] else None
    mode = "sum" if w is not None else case["mode"]
    pad = int(r.integers(-n, n)) if case["padding"] != "none" else None
    out = recengine.sparse_lengths_sum(arr, idx, ln, weights=w, mode=mode, padding_idx=pad)
    assert_pooled_close(out, rows, idx, lengths=ln, weights=w, mode=mode, padding_idx=pad)
    offsets = (np.cumsum(ln) - ln).astype(case["index_dtype"])
    out2 = recengine.embedding_bag(arr, idx, offsets, weights=w, mode=mode, padding_idx=pad)
    np.testing.assert_array_equal(out2, out)
    out3 = recengine.embedding_bag(arr, idx, np.append(offsets, idx.size), weights=w, mode=mode,
                                   padding_idx=pad, include_last_offset=True)
    np.testing.assert_array_equal(out3, out)
    # The array form and a table of the same values agree.
    table = EmbeddingTable(arr)
    np.testing.assert_array_equal(
        table.lookup(idx, lengths=ln, weights=w, mode=mode, padding_idx=pad), out)


def test_functional_docstring_examples() -> None:
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(
        recengine.sparse_lengths_sum(table, np.array([0, 2, 1]), np.array([2, 1])),
        [[4, 6], [2, 3]])
    np.testing.assert_array_equal(
        recengine.embedding_bag(np.eye(3, dtype=np.float32), np.array([0, 1, 2]),
                                np.array([0, 1])), [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(
        recengine.embedding_bag(np.eye(3, dtype=np.float32), np.array([[0, 1], [2, 2]]),
                                mode="mean"), [[0.5, 0.5, 0], [0, 0, 1]])


def test_functional_other_table_layouts() -> None:
    r = np.random.default_rng(4)
    base = r.standard_normal((40, 30))
    idx = r.integers(0, 40, 25)
    ln = np.array([5, 0, 10, 10])
    expected = pool_reference(base.astype(np.float32), idx, lengths=ln)
    for arr in (base, base.astype(np.float32)[:, ::2], np.asfortranarray(base.astype(np.float32)),
                base.astype(np.float32)[::-1][::-1], base.astype(np.int64)):
        rows = np.ascontiguousarray(arr, dtype=np.float32)
        out = recengine.sparse_lengths_sum(arr, idx, ln)
        assert_pooled_close(out, rows, idx, lengths=ln)
    out = recengine.sparse_lengths_sum(base, idx, ln)
    assert_pooled_close(out, base.astype(np.float32), idx, lengths=ln)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# torch


@pytest.mark.parametrize("mode", MODES)
def test_fp32_matches_torch_embedding_bag(mode: str) -> None:
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(8)
    x = r.standard_normal((60, 19)).astype(np.float32)
    table = EmbeddingTable(x)
    idx = r.integers(0, 60, 70)
    offsets = np.array([0, 3, 3, 20, 50, 69])
    for pad in (None, int(idx[5]), -1):
        w = r.standard_normal(70).astype(np.float32) if mode == "sum" else None
        for last in (False, True):
            offs = np.append(offsets, 70) if last else offsets
            got = table.lookup(idx, offsets=offs, weights=w, mode=mode, padding_idx=pad,
                               include_last_offset=last)
            expected = torch.nn.functional.embedding_bag(
                torch.from_numpy(idx), torch.from_numpy(x), torch.from_numpy(offs), mode=mode,
                per_sample_weights=None if w is None else torch.from_numpy(w),
                include_last_offset=last, padding_idx=pad).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    idx2 = r.integers(0, 60, (7, 4))
    expected = torch.nn.functional.embedding_bag(torch.from_numpy(idx2), torch.from_numpy(x),
                                                 mode=mode).numpy()
    np.testing.assert_allclose(table.lookup(idx2, mode=mode), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [8, 13, 64])
def test_int8_matches_torch_quantized_embedding_bag(dim: int) -> None:
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(9)
    x = r.standard_normal((50, dim)).astype(np.float32)
    table = EmbeddingTable(x, dtype="int8")
    idx = r.integers(0, 50, 40)
    offsets = np.array([0, 10, 10, 25])
    expected = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
        torch.from_numpy(table.raw_rows()), torch.from_numpy(idx), torch.from_numpy(offsets),
        False, 0, False, None, None, False).numpy()
    got = table.lookup(idx, offsets=offsets)
    assert_pooled_close(got, table.to_numpy(), idx, offsets=offsets)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # torch's own prepack gives the same rows as the table's quantisation.
    packed = torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(quantize_rowwise_reference(x, 8), packed)
    w = r.standard_normal(40).astype(np.float32)
    expected = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
        torch.from_numpy(table.raw_rows()), torch.from_numpy(idx), torch.from_numpy(offsets),
        False, 0, False, torch.from_numpy(w), None, False).numpy()
    np.testing.assert_allclose(table.lookup(idx, offsets=offsets, weights=w), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [8, 14, 64])
def test_int4_matches_torch_quantized_embedding_bag(dim: int) -> None:
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(10)
    x = r.standard_normal((50, dim)).astype(np.float32)
    table = EmbeddingTable(x, dtype="int4")
    idx = r.integers(0, 50, 40)
    offsets = np.array([0, 10, 10, 25])
    expected = torch.ops.quantized.embedding_bag_4bit_rowwise_offsets(
        torch.from_numpy(table.raw_rows()), torch.from_numpy(idx), torch.from_numpy(offsets),
        False, 0, False, None, None, False).numpy()
    np.testing.assert_allclose(table.lookup(idx, offsets=offsets), expected, rtol=1e-5,
                               atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(("fp32", "fp16", "bf16", "int8", "int4")),
       st.lists(st.integers(0, 6), min_size=1, max_size=12), st.integers(0, 2**31 - 1),
       st.booleans())
def test_a_bag_pools_to_the_same_bits_in_any_batch(dtype: str, lengths: list[int], seed: int,
                                                   weighted: bool) -> None:
    """A bag's result depends on its own rows only: pooled alone, or anywhere in a longer
    call, it gives the same bits (the kernels' pairing of lookups once depended on where the
    call ended)."""
    rng = np.random.default_rng(seed)
    table = recengine.EmbeddingTable.random(60, 6, dtype=dtype, seed=seed % 1000)
    lens = np.array(lengths, dtype=np.int64)
    idx = rng.integers(0, 60, int(lens.sum()))
    w = rng.random(idx.size, dtype=np.float32) if weighted else None
    whole = table.lookup(idx, lengths=lens, weights=w)
    bounds = np.concatenate([[0], np.cumsum(lens)])
    for b in range(lens.size):
        lo, hi = bounds[b], bounds[b + 1]
        alone = table.lookup(idx[lo:hi], lengths=lens[b:b + 1],
                             weights=None if w is None else w[lo:hi])
        np.testing.assert_array_equal(alone[0], whole[b])
