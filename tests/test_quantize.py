"""Storage formats: what each dtype stores, byte for byte, and how it decodes.

The reference formats are in ``recengine.reference`` (checked against torch's own prepack in
``test_reference.py``); here the core's encoder and decoder are checked against them.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import recengine
from hypothesis import given
from hypothesis import strategies as st
from recengine import EmbeddingTable
from recengine._dtypes import row_bytes
from recengine.reference import (
    dequantize_rowwise_reference,
    quantize_rowwise_reference,
    rowwise_row_bytes,
    to_bf16_reference,
)

QBITS = {"int8": 8, "int4": 4}
EPS32 = float(np.finfo(np.float32).eps)


def scale_bias(raw: np.ndarray, bits: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if bits == 8:
        sb = np.ascontiguousarray(raw[:, dim:dim + 8]).view("<f4")
        return sb[:, 0], sb[:, 1]
    c = (dim + 1) // 2
    sb = np.ascontiguousarray(raw[:, c:c + 4]).view("<f2").astype(np.float32)
    return sb[:, 0], sb[:, 1]


def codes(raw: np.ndarray, bits: int, dim: int) -> np.ndarray:
    if bits == 8:
        return raw[:, :dim].astype(np.int16)
    c = (dim + 1) // 2
    q = np.empty((raw.shape[0], 2 * c), np.int16)
    q[:, 0::2] = raw[:, :c] & 15
    q[:, 1::2] = raw[:, :c] >> 4
    return q[:, :dim]


def decode_slack(raw: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """A few ulps of ``|q * scale| + |bias|`` per row: room for an FMA in the decoder."""
    s, b = scale_bias(raw, bits, dim)
    top = 255 if bits == 8 else 15
    return (4 * EPS32 * (np.abs(s) * top + np.abs(b)) + 1e-30)[:, None]


@st.composite
def matrices(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 60))
    d = draw(st.one_of(st.sampled_from([1, 2, 3, 7, 8, 15, 16, 17, 33, 100, 257]),
                       st.integers(1, 40)))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 100.0]))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (r.standard_normal((n, d)) * scale + r.standard_normal((n, 1)) * scale)
    if draw(st.booleans()):
        x[r.integers(0, n)] = r.standard_normal() * scale  # a constant row
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# float formats


@given(matrices())
def test_fp16_is_numpy_float16(x: np.ndarray) -> None:
    t = EmbeddingTable(x, dtype="fp16")
    assert t.dtype == "fp16" and t.row_bytes == 2 * x.shape[1]
    expected = x.astype(np.float16)
    np.testing.assert_array_equal(t.to_numpy(), expected.astype(np.float32))
    np.testing.assert_array_equal(t.raw_rows().view("<f2"), expected)


@given(matrices())
def test_bf16_is_round_to_nearest_even(x: np.ndarray) -> None:
    t = EmbeddingTable(x, dtype="bf16")
    assert t.dtype == "bf16" and t.row_bytes == 2 * x.shape[1]
    expected = to_bf16_reference(x)
    np.testing.assert_array_equal(t.to_numpy(), expected)
    upper = (expected.view(np.uint32) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(t.raw_rows().view("<u2"), upper)


def test_bf16_ties_by_hand() -> None:
    x = np.array([[1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8 + 2**-20), 3.0]], np.float32)
    t = EmbeddingTable(x, dtype="bf16")
    assert t.to_numpy().tolist() == [[1.0, 1.015625, -1.0078125, 3.0]]


@given(matrices())
def test_fp32_is_exact(x: np.ndarray) -> None:
    t = EmbeddingTable(x)
    assert t.dtype == "fp32"
    np.testing.assert_array_equal(t.to_numpy(), x)
    np.testing.assert_array_equal(t.raw_rows().view("<f4"), x)


def test_float16_array_is_kept_as_fp16() -> None:
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float16)
    t = EmbeddingTable(x)
    assert t.dtype == "fp16"
    np.testing.assert_array_equal(t.to_numpy(), x.astype(np.float32))
    # float64 input is stored as fp32.
    t = EmbeddingTable(x.astype(np.float64) / 3)
    assert t.dtype == "fp32"
    np.testing.assert_array_equal(t.to_numpy(), (x.astype(np.float64) / 3).astype(np.float32))


def test_ml_dtypes_bfloat16_input() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(ml_dtypes.bfloat16)
    t = EmbeddingTable(x)
    assert t.dtype == "bf16"
    np.testing.assert_array_equal(t.to_numpy(), x.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# rowwise quantized formats


@pytest.mark.parametrize("storage", ["int8", "int4"])
@given(x=matrices())
def test_quantized_rows_match_reference(storage: str, x: np.ndarray) -> None:
    bits, (n, d) = QBITS[storage], x.shape
    t = EmbeddingTable(x, dtype=storage)
    assert t.dtype == storage
    assert t.row_bytes == rowwise_row_bytes(bits, d) == row_bytes(storage, d)
    assert t.nbytes == n * t.row_bytes
    raw = t.raw_rows()
    assert raw.dtype == np.uint8 and raw.shape == (n, t.row_bytes)
    ref_raw = quantize_rowwise_reference(x, bits)
    # Scale and bias come from the same float32 arithmetic: identical.
    s, b = scale_bias(raw, bits, d)
    rs, rb = scale_bias(ref_raw, bits, d)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(b, rb)
    # Codes within one step of the reference's (ties may round either way).
    assert np.abs(codes(raw, bits, d) - codes(ref_raw, bits, d)).max() <= 1
    if bits == 4 and d % 2:
        assert (raw[:, (d + 1) // 2 - 1] >> 4 == 0).all(), "the pad nibble must be 0"
    # Decoded rows: the decode of the core's own bytes, and within one quantum of the
    # reference round trip.
    rows = t.to_numpy()
    assert rows.dtype == np.float32 and rows.shape == (n, d)
    slack = decode_slack(raw, bits, d)
    assert (np.abs(rows - dequantize_rowwise_reference(raw, bits, d)) <= slack).all()
    ref_rows = dequantize_rowwise_reference(ref_raw, bits, d)
    assert (np.abs(rows - ref_rows) <= rs[:, None] * (1 + 1e-6) + slack).all()


@pytest.mark.parametrize("storage", ["int8", "int4"])
@given(x=matrices())
def test_from_raw_decodes_reference_bytes(storage: str, x: np.ndarray) -> None:
    bits, d = QBITS[storage], x.shape[1]
    raw = quantize_rowwise_reference(x, bits)
    t = EmbeddingTable.from_raw(raw, storage, d)
    assert t.dtype == storage and t.shape == x.shape
    np.testing.assert_array_equal(t.raw_rows(), raw)
    expected = dequantize_rowwise_reference(raw, bits, d)
    assert (np.abs(t.to_numpy() - expected) <= decode_slack(raw, bits, d)).all()


def test_int8_layout_by_hand() -> None:
    row = bytes([0, 10, 255]) + struct.pack("<ff", 0.5, -2.0)
    t = EmbeddingTable.from_raw(np.frombuffer(row, np.uint8).reshape(1, 11), "int8", 3)
    assert t.to_numpy().tolist() == [[-2.0, 3.0, 125.5]]
    np.testing.assert_array_equal(t.lookup(np.array([0, 0]), offsets=np.array([0])),
                                  [[-4.0, 6.0, 251.0]])


def test_int4_layout_by_hand() -> None:
    # Columns 0..4 = 0, 15, 7, 8, 1: low nibble first; fp16 scale 0.5, fp16 bias -1.
    row = bytes([0xF0, 0x87, 0x01]) + np.array([0.5, -1.0], "<f2").tobytes()
    t = EmbeddingTable.from_raw(np.frombuffer(row, np.uint8).reshape(1, 7), "int4", 5)
    assert t.to_numpy().tolist() == [[-1.0, 6.5, 2.5, 3.0, -0.5]]
    np.testing.assert_array_equal(t.lookup(np.array([[0, 0, 0]])), [[-3, 19.5, 7.5, 9, -1.5]])
    np.testing.assert_array_equal(t.lookup(np.array([[0, 0, 0]]), mode="max"),
                                  [[-1.0, 6.5, 2.5, 3.0, -0.5]])


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_degenerate_rows(storage: str) -> None:
    bits = QBITS[storage]
    a = np.float32(0.10003)  # fp16 rounds it up: an int4 bias above the row's max
    x = np.array([[2.0, 2.0, 2.0], [0.0, 1e-9, 0.0], [a, a, a], [-5.0, 5.0, 0.0]], np.float32)
    t = EmbeddingTable(x, dtype=storage)
    raw = t.raw_rows()
    np.testing.assert_array_equal(raw, quantize_rowwise_reference(x, bits))
    np.testing.assert_array_equal(t.to_numpy(),
                                  dequantize_rowwise_reference(raw, bits, 3))
    assert t.to_numpy()[0].tolist() == [2.0, 2.0, 2.0]
    one_col = EmbeddingTable(np.array([[3.5], [-1.0]], np.float32), dtype=storage)
    np.testing.assert_allclose(one_col.to_numpy(), [[3.5], [-1.0]], rtol=1e-3)


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_quantize_method_matches_constructor(storage: str) -> None:
    x = np.random.default_rng(3).standard_normal((40, 21)).astype(np.float32)
    direct = EmbeddingTable(x, dtype=storage)
    via = EmbeddingTable(x).quantize(storage)
    assert via.dtype == storage
    np.testing.assert_array_equal(via.raw_rows(), direct.raw_rows())
    # From fp16 / bf16 tables the quantizer sees the rounded values.
    for src in ("fp16", "bf16"):
        t = EmbeddingTable(x, dtype=src)
        q = t.quantize(storage)
        ref = quantize_rowwise_reference(t.to_numpy(), QBITS[storage])
        assert np.abs(codes(q.raw_rows(), QBITS[storage], 21)
                      - codes(ref, QBITS[storage], 21)).max() <= 1
        np.testing.assert_array_equal(scale_bias(q.raw_rows(), QBITS[storage], 21)[0],
                                      scale_bias(ref, QBITS[storage], 21)[0])


@pytest.mark.parametrize("src", ["fp32", "fp16", "bf16", "int8", "int4"])
@pytest.mark.parametrize("dst", ["fp32", "fp16", "bf16"])
def test_quantize_to_float_formats(src: str, dst: str) -> None:
    x = np.random.default_rng(4).standard_normal((9, 10)).astype(np.float32)
    t = EmbeddingTable(x, dtype=src)
    u = t.quantize(dst)
    assert u.dtype == dst and u.shape == t.shape
    rows = t.to_numpy()
    expected = {"fp32": rows, "fp16": rows.astype(np.float16).astype(np.float32),
                "bf16": to_bf16_reference(rows)}[dst]
    np.testing.assert_array_equal(u.to_numpy(), expected)
    # The source table is unchanged.
    np.testing.assert_array_equal(t.to_numpy(), rows)


@pytest.mark.parametrize(
    ("alias", "name"),
    [("float32", "fp32"), ("f32", "fp32"), (np.float32, "fp32"), ("float16", "fp16"),
     ("half", "fp16"), (np.float16, "fp16"), ("bfloat16", "bf16"), ("uint8", "int8"),
     ("8bit", "int8"), ("4bit", "int4"), ("INT4", "int4")],
)
def test_dtype_aliases(alias: object, name: str) -> None:
    assert EmbeddingTable(np.ones((2, 3), np.float32), dtype=alias).dtype == name


# ---------------------------------------------------------------------------------------------
# EmbeddingTable.random


@pytest.mark.parametrize("storage", recengine.STORAGE_DTYPES)
def test_random_tables(storage: str) -> None:
    t = EmbeddingTable.random(500, 13, dtype=storage, seed=5)
    assert (t.num_rows, t.dim, t.dtype, len(t)) == (500, 13, storage, 500)
    assert t.nbytes == 500 * row_bytes(storage, 13)
    rows = t.to_numpy()
    assert rows.shape == (500, 13)
    assert (rows >= -1.0 - 1e-2).all() and (rows <= 1.0 + 1e-2).all()
    assert np.unique(rows).size > 10
    np.testing.assert_array_equal(EmbeddingTable.random(500, 13, storage, seed=5).raw_rows(),
                                  t.raw_rows())
    assert not np.array_equal(EmbeddingTable.random(500, 13, storage, seed=6).to_numpy(), rows)


def test_random_fp32_statistics() -> None:
    x = EmbeddingTable.random(4000, 16, seed=1).to_numpy()
    assert (x >= -1).all() and (x < 1).all()
    assert abs(float(x.mean())) < 0.02
    assert abs(float(x.var()) - 1 / 3) < 0.02  # uniform on [-1, 1)


@pytest.mark.parametrize("storage", ["fp16", "bf16", "int8", "int4"])
def test_random_quantizes_the_fp32_values(storage: str) -> None:
    x = EmbeddingTable.random(300, 19, seed=9).to_numpy()
    t = EmbeddingTable.random(300, 19, dtype=storage, seed=9)
    np.testing.assert_array_equal(t.raw_rows(), EmbeddingTable(x, dtype=storage).raw_rows())


def test_random_same_for_any_thread_count(restore_threads: None) -> None:
    recengine.set_num_threads(1)
    a = EmbeddingTable.random(30000, 24, seed=3).raw_rows()
    recengine.set_num_threads(2)
    b = EmbeddingTable.random(30000, 24, seed=3).raw_rows()
    np.testing.assert_array_equal(a, b)
