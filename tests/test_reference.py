"""The numpy reference implementations against hand-computed cases and independent formulas.

The rest of the suite trusts ``recengine.reference``; this file is what earns that trust. It
needs numpy only: before the compiled core exists it loads ``reference.py`` by path.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

try:
    from recengine import reference as ref
except ImportError:  # the compiled core is not built yet
    _path = Path(__file__).resolve().parents[1] / "python" / "recengine" / "reference.py"
    _spec = importlib.util.spec_from_file_location("recengine_reference_standalone", _path)
    assert _spec is not None and _spec.loader is not None
    ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ref)

pool = ref.pool_reference
quant = ref.quantize_rowwise_reference
dequant = ref.dequantize_rowwise_reference

T = np.array([[1.0, 2.0], [3.0, -4.0], [-5.0, 6.0], [0.5, 0.25]], dtype=np.float32)


def f32(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(len(rows), -1)


# ---------------------------------------------------------------------------------------------
# pool_reference: hand-computed cases


def test_sum_with_lengths() -> None:
    out = pool(T, np.array([0, 1, 2, 3, 3]), lengths=np.array([2, 0, 3]))
    np.testing.assert_array_equal(out, f32([[4, -2], [0, 0], [-4, 6.5]]))
    assert out.dtype == np.float32 and out.shape == (3, 2)


def test_sum_with_offsets_matches_lengths() -> None:
    out = pool(T, np.array([0, 1, 2, 3, 3]), offsets=np.array([0, 2, 2]))
    np.testing.assert_array_equal(out, f32([[4, -2], [0, 0], [-4, 6.5]]))


def test_include_last_offset() -> None:
    out = pool(T, np.array([0, 1, 2]), offsets=np.array([0, 1, 3]), include_last_offset=True)
    np.testing.assert_array_equal(out, f32([[1, 2], [-2, 2]]))
    # Without the flag, the same offsets describe three bags, the last one empty.
    out = pool(T, np.array([0, 1, 2]), offsets=np.array([0, 1, 3]))
    np.testing.assert_array_equal(out, f32([[1, 2], [-2, 2], [0, 0]]))


def test_mean_and_max() -> None:
    idx, ln = np.array([0, 1, 2, 1]), np.array([3, 1])
    np.testing.assert_allclose(pool(T, idx, lengths=ln, mode="mean"),
                               f32([[-1 / 3, 4 / 3], [3, -4]]), rtol=1e-7)
    np.testing.assert_array_equal(pool(T, idx, lengths=ln, mode="max"), f32([[3, 6], [3, -4]]))


def test_max_of_negative_rows_is_negative() -> None:
    # max must start from -inf, not from 0.
    t = f32([[-3, -1], [-2, -7]])
    np.testing.assert_array_equal(pool(t, np.array([0, 1]), lengths=np.array([2]), mode="max"),
                                  f32([[-2, -1]]))


def test_weights() -> None:
    out = pool(T, np.array([0, 1, 3]), lengths=np.array([2, 1]),
               weights=np.array([2.0, -1.0, 4.0], np.float32))
    np.testing.assert_array_equal(out, f32([[-1, 8], [2, 1]]))


def test_two_d_indices() -> None:
    idx = np.array([[0, 1], [2, 2], [3, 0]])
    np.testing.assert_array_equal(pool(T, idx), f32([[4, -2], [-10, 12], [1.5, 2.25]]))
    np.testing.assert_array_equal(pool(T, idx, mode="mean"),
                                  f32([[2, -1], [-5, 6], [0.75, 1.125]]))
    w = np.array([[1, 0], [0.5, 0.5], [2, 2]], np.float32)
    np.testing.assert_array_equal(pool(T, idx, weights=w), f32([[1, 2], [-5, 6], [3, 4.5]]))
    assert pool(T, np.zeros((3, 0), np.int64)).tolist() == [[0, 0]] * 3
    assert pool(T, np.zeros((0, 4), np.int64)).shape == (0, 2)


def test_padding_idx_skipped_and_not_counted() -> None:
    idx, ln = np.array([0, 2, 2, 1, 2, 2]), np.array([3, 1, 2])
    np.testing.assert_array_equal(pool(T, idx, lengths=ln, padding_idx=2),
                                  f32([[1, 2], [3, -4], [0, 0]]))
    np.testing.assert_array_equal(pool(T, idx, lengths=ln, mode="mean", padding_idx=2),
                                  f32([[1, 2], [3, -4], [0, 0]]))
    np.testing.assert_array_equal(pool(T, idx, lengths=ln, mode="max", padding_idx=2),
                                  f32([[1, 2], [3, -4], [0, 0]]))
    # Negative padding_idx counts from the end, as in torch: -2 is row 2 of 4.
    np.testing.assert_array_equal(pool(T, idx, lengths=ln, mode="mean", padding_idx=-2),
                                  pool(T, idx, lengths=ln, mode="mean", padding_idx=2))
    # Without padding, the mean of bag 0 counts all three rows.
    np.testing.assert_allclose(pool(T, idx, lengths=ln, mode="mean")[0], [-3, 14 / 3], rtol=1e-6)


def test_empty_bags_and_batch_zero() -> None:
    for mode in ("sum", "mean", "max"):
        out = pool(T, np.array([], np.int64), lengths=np.array([0, 0]), mode=mode)
        np.testing.assert_array_equal(out, np.zeros((2, 2), np.float32))
        out = pool(T, np.array([], np.int64), offsets=np.array([], np.int64), mode=mode)
        assert out.shape == (0, 2) and out.dtype == np.float32
        out = pool(T, np.array([], np.int64), offsets=np.array([0]), include_last_offset=True,
                   mode=mode)
        assert out.shape == (0, 2)


def test_accumulates_in_float64() -> None:
    t = f32([[1e8], [1.0], [-1e8]])
    # float32 left to right: (1e8 + 1) - 1e8 == 0; exact: 1.
    assert pool(t, np.array([0, 1, 2]), lengths=np.array([3]))[0, 0] == 1.0


def test_int32_and_int64_indices_agree() -> None:
    idx = np.array([3, 1, 0, 2])
    a = pool(T, idx.astype(np.int32), offsets=np.array([0, 1], np.int32))
    b = pool(T, idx.astype(np.int64), offsets=np.array([0, 1], np.int64))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        (dict(indices=[0, 1], lengths=[1]), ValueError),
        (dict(indices=[0, 1], lengths=[3, -1]), ValueError),
        (dict(indices=[0, 1], offsets=[1]), ValueError),
        (dict(indices=[0, 1, 2], offsets=[0, 2, 1]), ValueError),
        (dict(indices=[0, 1], offsets=[0, 3]), ValueError),
        (dict(indices=[0, 1], offsets=[0, 1], include_last_offset=True), ValueError),
        (dict(indices=[0, 1]), ValueError),
        (dict(indices=[0, 1], offsets=[0], lengths=[2]), ValueError),
        (dict(indices=[[0, 1]], offsets=[0]), ValueError),
        (dict(indices=np.zeros((1, 1, 1), np.int64)), ValueError),
        (dict(indices=[0, 1], lengths=[2], weights=[1.0]), ValueError),
        (dict(indices=[0, 1], lengths=[2], weights=[1.0, 1.0], mode="mean"), ValueError),
        (dict(indices=[0, 1], lengths=[2], weights=[1.0, 1.0], mode="max"), ValueError),
        (dict(indices=[0, 1], lengths=[2], mode="min"), ValueError),
        (dict(indices=[0, 1], lengths=[2], padding_idx=4), ValueError),
        (dict(indices=[0, 4], lengths=[2]), IndexError),
        (dict(indices=[0, -1], lengths=[2]), IndexError),
        (dict(indices=np.array([0.0, 1.0]), lengths=[2]), TypeError),
    ],
)
def test_reference_rejects_bad_input(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        pool(T, **kwargs)


def test_index_error_names_index_and_bag() -> None:
    with pytest.raises(IndexError, match=r"77.*bag 2"):
        pool(T, np.array([0, 1, 77]), lengths=np.array([1, 1, 1]))


def test_bag_bounds() -> None:
    assert ref.bag_bounds_reference(5, offsets=[0, 2, 2]) == [(0, 2), (2, 2), (2, 5)]
    assert ref.bag_bounds_reference(5, lengths=[2, 0, 3]) == [(0, 2), (2, 2), (2, 5)]
    assert ref.bag_bounds_reference(5, offsets=[0, 2, 5], include_last_offset=True) == [
        (0, 2), (2, 5)]


# ---------------------------------------------------------------------------------------------
# pool_reference against an independent, vectorised formulation


@st.composite
def pool_cases(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 30))
    d = draw(st.integers(1, 9))
    lengths = draw(st.lists(st.integers(0, 7), max_size=12))
    seed = draw(st.integers(0, 2**32 - 1))
    mode = draw(st.sampled_from(["sum", "mean", "max"]))
    weighted = mode == "sum" and draw(st.booleans())
    pad = draw(st.one_of(st.none(), st.integers(-n, n - 1)))
    r = np.random.default_rng(seed)
    table = r.standard_normal((n, d)).astype(np.float32)
    idx = r.integers(0, n, sum(lengths))
    w = r.standard_normal(idx.size).astype(np.float32) if weighted else None
    return dict(table=table, idx=idx, lengths=np.array(lengths, np.int64), w=w, mode=mode,
                pad=pad)


@given(pool_cases())
def test_pool_matches_dense_formulation(case: dict) -> None:
    table, idx, lengths, w = case["table"], case["idx"], case["lengths"], case["w"]
    n, mode, pad = len(table), case["mode"], case["pad"]
    out = pool(table, idx, lengths=lengths, weights=w, mode=mode, padding_idx=pad)
    # Dense: a [B, L] matrix of weights (0 where the lookup is not in the bag or is padding).
    bag_of = np.repeat(np.arange(len(lengths)), lengths)
    keep = np.ones(idx.size, bool) if pad is None else idx != pad % n
    m = np.zeros((len(lengths), idx.size))
    m[bag_of, np.arange(idx.size)] = (1.0 if w is None else w) * keep
    rows = table.astype(np.float64)[idx]
    counts = np.bincount(bag_of[keep], minlength=len(lengths)) if idx.size else np.zeros(
        len(lengths))
    if mode == "max":
        masked = np.where(m[:, :, None] != 0, rows[None], -np.inf)
        expected = np.where(counts[:, None] > 0, masked.max(axis=1, initial=-np.inf), 0.0)
    else:
        expected = m @ rows
        if mode == "mean":
            expected = expected / np.maximum(counts, 1)[:, None]
    np.testing.assert_allclose(out, expected.astype(np.float32).reshape(out.shape), rtol=1e-6,
                               atol=1e-6)
    # Offsets describe the same bags.
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(
        lengths) else np.zeros(0, np.int64)
    np.testing.assert_array_equal(
        pool(table, idx, offsets=offsets, weights=w, mode=mode, padding_idx=pad), out)
    np.testing.assert_array_equal(
        pool(table, idx, offsets=np.append(offsets, idx.size), weights=w, mode=mode,
             padding_idx=pad, include_last_offset=True), out)


@given(pool_cases())
def test_pool_matches_torch(case: dict) -> None:
    torch = pytest.importorskip("torch")
    table, idx, lengths, w = case["table"], case["idx"], case["lengths"], case["w"]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(
        lengths) else np.zeros(0, np.int64)
    out = pool(table, idx, offsets=offsets, weights=w, mode=case["mode"],
               padding_idx=case["pad"])
    expected = torch.nn.functional.embedding_bag(
        torch.from_numpy(idx), torch.from_numpy(table), torch.from_numpy(offsets),
        mode=case["mode"], per_sample_weights=None if w is None else torch.from_numpy(w),
        padding_idx=case["pad"]).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# quantize_rowwise_reference / dequantize_rowwise_reference: hand-computed rows


def test_int8_row_layout_by_hand() -> None:
    raw = quant(f32([[-1.0, 0.0, 1.0, 0.5]]), 8)
    assert raw.dtype == np.uint8 and raw.shape == (1, 12)
    # range 2, inv = 255 / (2 + 1e-8) = 127.5 in float32: codes rint(0, 127.5, 255, 191.25).
    assert raw[0, :4].tolist() == [0, 128, 255, 191]
    scale, bias = struct.unpack("<ff", raw[0, 4:].tobytes())
    assert scale == np.float32(2.0) / np.float32(255.0)
    assert bias == -1.0
    back = dequant(raw, 8, 4)
    s, b = np.float32(scale), np.float32(-1.0)
    np.testing.assert_array_equal(back, [[b, np.float32(128) * s + b, np.float32(255) * s + b,
                                          np.float32(191) * s + b]])


def test_int8_constant_row() -> None:
    raw = quant(f32([[3.0, 3.0, 3.0]]), 8)
    assert raw[0, :3].tolist() == [0, 0, 0]
    assert struct.unpack("<ff", raw[0, 3:].tobytes()) == (0.0, 3.0)
    np.testing.assert_array_equal(dequant(raw, 8, 3), f32([[3, 3, 3]]))


def test_int4_row_layout_by_hand() -> None:
    raw = quant(f32([[0.0, 15.0, 7.0, 8.0, 1.0]]), 4)
    # ceil(5/2) = 3 bytes of codes + fp16 scale + fp16 bias.
    assert raw.shape == (1, 7)
    # Column 2k in the low nibble, 2k+1 in the high nibble, zero pad nibble for odd D.
    assert raw[0, :3].tolist() == [0xF0, 0x87, 0x01]
    assert raw[0, 3:5].tobytes() == np.float16(1.0).tobytes()  # scale: range 15 / 15
    assert raw[0, 5:7].tobytes() == np.float16(0.0).tobytes()
    np.testing.assert_array_equal(dequant(raw, 4, 5), f32([[0, 15, 7, 8, 1]]))


def test_int4_fp16_scale_and_bias() -> None:
    raw = quant(f32([[0.1, 0.1 + 3.0, 1.0]]), 4)
    scale = raw[0, 2:4].view(np.float16)[0]
    bias = raw[0, 4:6].view(np.float16)[0]
    assert bias == np.float16(np.float32(0.1))  # min rounded to nearest fp16
    expected_scale = np.float16((np.float32(3.1) - np.float32(bias)) / np.float32(15))
    assert scale == expected_scale
    codes = [raw[0, 0] & 15, raw[0, 0] >> 4, raw[0, 1] & 15]
    inv = np.float32(1) / np.float32(scale)
    want = [int(np.rint((np.float32(v) - np.float32(bias)) * inv)) for v in (0.1, 3.1, 1.0)]
    assert [int(c) for c in codes] == [min(max(c, 0), 15) for c in want]
    assert raw[0, 1] >> 4 == 0  # pad nibble


def test_int4_degenerate_rows() -> None:
    # Constant row: range 0 -> scale 1.0, codes 0, value = bias.
    raw = quant(f32([[2.0, 2.0]]), 4)
    assert raw[0, 0] == 0
    assert raw[0, 1:3].view(np.float16)[0] == 1.0
    np.testing.assert_array_equal(dequant(raw, 4, 2), f32([[2, 2]]))
    # A range too small for an fp16 scale (it would round to 0) falls back to scale 1.0.
    raw = quant(f32([[0.0, 1e-9]]), 4)
    assert raw[0, 1:3].view(np.float16)[0] == 1.0
    assert raw[0, 0] == 0
    # The min rounds *up* to an fp16 above the max: range < 0 -> scale 1.0, codes clip to 0.
    a = np.float32(0.10003)
    assert np.float32(np.float16(a)) > a
    raw = quant(np.array([[a, a]], np.float32), 4)
    assert raw[0, 1:3].view(np.float16)[0] == 1.0
    assert raw[0, 0] == 0
    np.testing.assert_array_equal(dequant(raw, 4, 2), np.float32(np.float16(a)) * np.ones((1, 2)))


def test_row_bytes() -> None:
    assert [ref.rowwise_row_bytes(8, d) for d in (1, 7, 32)] == [9, 15, 40]
    assert [ref.rowwise_row_bytes(4, d) for d in (1, 7, 32)] == [5, 8, 20]
    for bits in (8, 4):
        for d in (1, 2, 3, 17):
            assert quant(np.zeros((2, d), np.float32), bits).shape == (
                2, ref.rowwise_row_bytes(bits, d))
            assert quant(np.zeros((0, d), np.float32), bits).shape == (
                0, ref.rowwise_row_bytes(bits, d))


def test_quantize_rejects_bad_bits_and_shapes() -> None:
    with pytest.raises(ValueError):
        quant(np.zeros((2, 2), np.float32), 2)
    with pytest.raises(ValueError):
        quant(np.zeros((2, 0), np.float32), 8)
    with pytest.raises(ValueError):
        dequant(np.zeros((2, 5), np.uint8), 8, 4)


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1),
       st.sampled_from([1e-6, 1e-3, 1.0, 30.0]), st.sampled_from([8, 4]))
def test_roundtrip_error_within_bound(n: int, d: int, seed: int, scale: float, bits: int) -> None:
    r = np.random.default_rng(seed)
    x = (r.standard_normal((n, d)) * scale + r.standard_normal((n, 1)) * scale).astype(
        np.float32)
    raw = quant(x, bits)
    back = dequant(raw, bits, d)
    err = np.abs(back.astype(np.float64) - x).max(axis=1)
    bound = ref.rowwise_error_bound_reference(x, bits)
    assert (err <= bound).all(), (err, bound)
    # The bound is about half a quantum, not something looser.
    if bits == 8:
        q_scale = raw[:, d:d + 4].copy().view("<f4").reshape(-1)
        assert (bound <= 0.51 * q_scale + 1e-6 * np.abs(x).max(axis=1) + 2e-8).all()
    codes = raw[:, :d] if bits == 8 else raw[:, :(d + 1) // 2]
    if bits == 4 and d % 2:
        assert (codes[:, -1] >> 4 == 0).all()
    # Re-quantizing dequantized values is stable to within one code.
    again = dequant(quant(back, bits), bits, d)
    assert (np.abs(again - back).max(axis=1) <= ref.rowwise_error_bound_reference(back, bits)).all()


def test_quantize_matches_torch_prepack() -> None:
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(0)
    for scale in (1e-6, 1e-2, 1.0, 50.0):
        x = (r.standard_normal((200, 38)) * scale).astype(np.float32)
        x[0] = 0.5  # a constant row
        expected = torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(quant(x, 8), expected)
        expected = torch.ops.quantized.embedding_bag_4bit_prepack(torch.from_numpy(x),
                                                                  False).numpy()
        np.testing.assert_array_equal(quant(x, 4), expected)
        for bits in (8, 4):
            torch_dq = (torch.ops.quantized.embedding_bag_byte_unpack if bits == 8 else
                        torch.ops.quantized.embedding_bag_4bit_unpack)
            back = torch_dq(torch.from_numpy(quant(x, bits))).numpy()
            np.testing.assert_allclose(dequant(quant(x, bits), bits, 38), back, rtol=1e-6,
                                       atol=1e-6 * scale)


# ---------------------------------------------------------------------------------------------
# to_bf16_reference


def test_bf16_by_hand() -> None:
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, 0.0, -0.0, np.inf,
                  -np.inf, 3.4028235e38, 1e-40], np.float32)
    got = ref.to_bf16_reference(x)
    assert got.dtype == np.float32
    # Ties go to even, above the tie rounds up, exact values stay, past the max -> inf.
    assert got[:8].tolist() == [1.0, 1.015625, 1.0078125, -2.5, 0.0, 0.0, np.inf, -np.inf]
    assert np.signbit(got[5]) and not np.signbit(got[4])
    assert got[8] == np.inf
    # A subnormal: 1e-40 is 0x000116C2, whose low half rounds down.
    assert got[9].view(np.uint32) == 0x00010000
    nan = ref.to_bf16_reference(np.array([np.nan], np.float32))
    assert np.isnan(nan[0])
    assert ref.to_bf16_reference(np.zeros((2, 3), np.float32)).shape == (2, 3)


@given(st.integers(0, 2**32 - 1))
def test_bf16_is_nearest_even(seed: int) -> None:
    r = np.random.default_rng(seed)
    bits = r.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    got = ref.to_bf16_reference(x)
    gb = got.view(np.uint32)
    assert ((gb & 0xFFFF) == 0).all()
    fin = np.isfinite(got)
    # Nearest: no bf16 value lies strictly closer (checked against both neighbours).
    lo = (x.view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
    hi_bits = (x.view(np.uint32) & 0xFFFF0000).astype(np.uint64) + 0x10000
    hi = hi_bits.astype(np.uint32).view(np.float32).astype(np.float64)
    xd = x.astype(np.float64)
    best = np.minimum(np.abs(xd - lo), np.where(np.isfinite(hi), np.abs(xd - hi), np.inf))
    assert (np.abs(got[fin].astype(np.float64) - xd[fin]) <= best[fin]).all()


def test_bf16_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(1)
    x = np.concatenate([r.standard_normal(1000).astype(np.float32),
                        (1 + np.arange(256) * 2.0**-15).astype(np.float32)])
    expected = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ref.to_bf16_reference(x), expected)
