"""Bad arguments raise the documented Python exceptions with useful messages, and never crash
the interpreter; odd but valid inputs (non-contiguous arrays) work."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import recengine
import recengine.functional
import recengine.reference
from recengine import EmbeddingCollection, EmbeddingTable
from recengine.cache import CachedTable
from recengine.reference import pool_reference

STORAGE = ("fp32", "fp16", "bf16", "int8", "int4")


@pytest.fixture(params=STORAGE)
def table(request: pytest.FixtureRequest) -> EmbeddingTable:
    x = np.arange(40, dtype=np.float32).reshape(10, 4) / 7
    return EmbeddingTable(x, dtype=request.param)


def bag_named(msg: str, bag: int) -> bool:
    return re.search(rf"bag\D{{0,3}}{bag}(?!\d)", msg, re.IGNORECASE) is not None


# ---------------------------------------------------------------------------------------------
# indices out of range


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad", [10, 77, 2**31 - 1, -1, -10])
def test_out_of_range_index(table: EmbeddingTable, index_dtype: type, bad: int) -> None:
    idx = np.array([0, 1, 2, bad, 4], dtype=index_dtype)
    for kw in ({"lengths": np.array([1, 1, 1, 2])}, {"offsets": np.array([0, 1, 2, 3])}):
        with pytest.raises(IndexError) as info:
            table.lookup(idx, **kw)
        msg = str(info.value)
        assert str(bad) in msg, msg
        assert bag_named(msg, 3), msg
    with pytest.raises(IndexError) as info:
        table.lookup(idx[1:].reshape(2, 2))
    assert str(bad) in str(info.value) and bag_named(str(info.value), 1), str(info.value)


def test_out_of_range_int64_extremes(table: EmbeddingTable) -> None:
    for bad in (2**40, 2**63 - 1, -(2**63)):
        with pytest.raises(IndexError, match=re.escape(str(bad))):
            table.lookup(np.array([bad], np.int64), offsets=np.array([0]))
    with pytest.raises(IndexError):
        table.lookup(np.array([2**63], np.uint64), offsets=np.array([0]))


def test_out_of_range_in_any_mode_and_with_padding(table: EmbeddingTable) -> None:
    for mode in ("sum", "mean", "max"):
        with pytest.raises(IndexError):
            table.lookup(np.array([3, 3, 12]), lengths=np.array([2, 1]), mode=mode)
        # padding does not excuse a bad index elsewhere
        with pytest.raises(IndexError):
            table.lookup(np.array([3, 3, 12]), lengths=np.array([2, 1]), mode=mode,
                         padding_idx=3)


def test_first_bad_index_reported_in_big_batch(restore_threads: None) -> None:
    recengine.set_num_threads(2)
    t = EmbeddingTable.random(1000, 64, seed=0)
    r = np.random.default_rng(0)
    idx = r.integers(0, 1000, 200_000)
    idx[150_000] = 5000
    idx[190_000] = 6000
    lengths = np.full(2000, 100)
    with pytest.raises(IndexError) as info:
        t.lookup(idx, lengths=lengths)
    assert "5000" in str(info.value) and bag_named(str(info.value), 1500), str(info.value)


def test_functional_index_errors() -> None:
    arr = np.ones((5, 3), np.float32)
    with pytest.raises(IndexError, match="9"):
        recengine.sparse_lengths_sum(arr, np.array([0, 9]), np.array([2]))
    with pytest.raises(IndexError):
        recengine.embedding_bag(arr.astype(np.float16), np.array([0, -2]), np.array([0]))


# ---------------------------------------------------------------------------------------------
# bag descriptions


@pytest.mark.parametrize(
    "kw",
    [
        {"lengths": np.array([2, 2])},  # sums to 4, not 5
        {"lengths": np.array([2, 2, 2])},  # sums to 6
        {"lengths": np.array([6, -1])},  # negative
        {"offsets": np.array([1, 3])},  # does not start at 0
        {"offsets": np.array([0, 3, 2])},  # decreasing
        {"offsets": np.array([0, 6])},  # past the end
        {"offsets": np.array([0, 2, 4]), "include_last_offset": True},  # last != len
        {"offsets": np.array([], np.int64), "include_last_offset": True},
        {"offsets": np.array([0, 2]), "lengths": np.array([2, 3])},  # both
        {},  # neither, with 1-D indices
        {"offsets": np.array([[0, 2]])},  # 2-D offsets
        {"lengths": np.array([[2, 3]])},
    ],
)
def test_bad_bag_descriptions(table: EmbeddingTable, kw: dict) -> None:
    with pytest.raises(ValueError):
        table.lookup(np.array([0, 1, 2, 3, 4]), **kw)


def test_indices_rank(table: EmbeddingTable) -> None:
    with pytest.raises(ValueError):
        table.lookup(np.zeros((2, 2, 2), np.int64))
    with pytest.raises(ValueError):
        table.lookup(np.array(3))
    with pytest.raises(ValueError):
        table.lookup(np.zeros((2, 3), np.int64), offsets=np.array([0, 3]))
    with pytest.raises(ValueError):
        table.lookup(np.zeros((2, 3), np.int64), lengths=np.array([3, 3]))


# ---------------------------------------------------------------------------------------------
# weights, mode, padding


def test_bad_weights(table: EmbeddingTable) -> None:
    idx, ln = np.array([0, 1, 2]), np.array([2, 1])
    for w in (np.ones(2, np.float32), np.ones(4, np.float32), np.ones(0, np.float32)):
        with pytest.raises(ValueError):
            table.lookup(idx, lengths=ln, weights=w)
    for mode in ("mean", "max"):
        with pytest.raises(ValueError):
            table.lookup(idx, lengths=ln, weights=np.ones(3, np.float32), mode=mode)
    with pytest.raises(TypeError):
        table.lookup(idx, lengths=ln, weights=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError):
        table.lookup(np.zeros((2, 3), np.int64), weights=np.ones(5, np.float32))


@pytest.mark.parametrize("mode", ["min", "SUM ", "", "avg", "median"])
def test_unknown_mode(table: EmbeddingTable, mode: str) -> None:
    with pytest.raises(ValueError):
        table.lookup(np.array([0, 1]), offsets=np.array([0]), mode=mode)


@pytest.mark.parametrize("pad", [10, 11, -11, 2**40])
def test_padding_idx_out_of_range(table: EmbeddingTable, pad: int) -> None:
    with pytest.raises((ValueError, IndexError)):
        table.lookup(np.array([0, 1]), offsets=np.array([0]), padding_idx=pad)


# ---------------------------------------------------------------------------------------------
# types


@pytest.mark.parametrize(
    "indices",
    [np.array([0.0, 1.0]), np.array([0.5, 1.5], np.float32), np.array([True, False]),
     np.array(["0", "1"]), [0.0, 1.0], np.array([object(), object()])],
)
def test_non_integer_indices(table: EmbeddingTable, indices: object) -> None:
    with pytest.raises(TypeError):
        table.lookup(indices, offsets=np.array([0]))


def test_float_offsets_and_lengths(table: EmbeddingTable) -> None:
    with pytest.raises(TypeError):
        table.lookup(np.array([0, 1]), offsets=np.array([0.0]))
    with pytest.raises(TypeError):
        table.lookup(np.array([0, 1]), lengths=np.array([2.0]))


@pytest.mark.parametrize("dtype", ["int16", "int2", "float64x", "complex64", "q8"])
def test_unsupported_table_dtype(dtype: str) -> None:
    with pytest.raises(TypeError):
        EmbeddingTable(np.ones((3, 4), np.float32), dtype=dtype)
    with pytest.raises(TypeError):
        EmbeddingTable.random(3, 4, dtype=dtype)
    with pytest.raises(TypeError):
        EmbeddingTable(np.ones((3, 4), np.float32)).quantize(dtype)


def test_non_float_table_arrays() -> None:
    with pytest.raises(TypeError):
        EmbeddingTable(np.array([["a", "b"]]))
    with pytest.raises(TypeError):
        EmbeddingTable(np.ones((2, 2), bool))
    with pytest.raises(TypeError):
        recengine.sparse_lengths_sum(np.array([["a"]]), np.array([0]), np.array([1]))
    with pytest.raises(TypeError):
        recengine.embedding_bag(np.ones((2, 2), np.complex64), np.array([0]), np.array([0]))


def test_table_shapes() -> None:
    with pytest.raises(ValueError):
        EmbeddingTable(np.ones((3, 0), np.float32))
    with pytest.raises(ValueError):
        EmbeddingTable(np.ones((3, 0), np.float32), dtype="int4")
    with pytest.raises(ValueError):
        EmbeddingTable.random(3, 0)
    with pytest.raises(ValueError):
        EmbeddingTable(np.ones(4, np.float32))
    with pytest.raises(ValueError):
        EmbeddingTable(np.ones((2, 2, 2), np.float32))
    with pytest.raises(ValueError):
        recengine.sparse_lengths_sum(np.ones((3, 0), np.float32), np.array([0]), np.array([1]))
    with pytest.raises((ValueError, TypeError)):
        recengine.sparse_lengths_sum(np.ones(3, np.float32), np.array([0]), np.array([1]))


def test_from_raw_errors() -> None:
    with pytest.raises(ValueError):  # 8 bytes are not an int8 row of dim 4 (12 bytes)
        EmbeddingTable.from_raw(np.zeros((2, 8), np.uint8), "int8", 4)
    with pytest.raises(ValueError):
        EmbeddingTable.from_raw(np.zeros((2, 5), np.uint8), "int4", 4)
    with pytest.raises((ValueError, TypeError)):
        EmbeddingTable.from_raw(np.zeros(12, np.uint8), "int8", 4)
    with pytest.raises(ValueError):
        EmbeddingTable.from_raw(np.zeros((2, 8), np.uint8), "int8", 0)
    with pytest.raises(TypeError):
        EmbeddingTable.from_raw(np.zeros((2, 12), np.uint8), "int12", 4)


def test_thread_count_errors() -> None:
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(ValueError):
            recengine.set_num_threads(bad)  # type: ignore[arg-type]
    # An absurd count is refused (4096 threads on 2 cores made a lookup take minutes).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with pytest.raises(ValueError, match="per core"):
        recengine.set_num_threads(4096 * max(cores or 1, 1))


def test_absurd_thread_count_from_the_environment_is_capped() -> None:
    code = ("import os, numpy as np, recengine; t = recengine.EmbeddingTable.random(1000, 16); "
            "t.lookup(np.arange(1000), offsets=np.arange(0, 1000, 10)); "
            "n = recengine.get_num_threads(); c = os.cpu_count(); "
            "assert 1 <= n <= 4 * c, (n, c); print(n)")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RECENGINE_NUM_THREADS": "100000",
                                            "RECENGINE_POOL": "own"})
    assert done.returncode == 0, done.stderr


def test_simd_level_errors() -> None:
    from recengine import _core

    with pytest.raises(ValueError):
        _core.set_simd_level("sse9")
    for level in ("avx512", "avx2"):
        if level not in _core.available_simd_levels():
            with pytest.raises(ValueError):
                _core.set_simd_level(level)
    _core.set_simd_level(None)
    best = next(lv for lv in ("avx512", "avx2", "scalar") if lv in _core.available_simd_levels())
    if "RECENGINE_SIMD" not in os.environ:
        assert _core.simd_level() == best


# ---------------------------------------------------------------------------------------------
# valid but unusual inputs


def test_non_contiguous_arguments_work(table: EmbeddingTable) -> None:
    rows = table.to_numpy()
    base = np.array([0, 9, 1, 9, 2, 9, 3, 9, 4, 9, 5, 9], np.int64)
    idx = base[::2]  # [0, 1, 2, 3, 4, 5], not contiguous
    assert not idx.flags.c_contiguous
    offs = np.array([0, 7, 2, 7, 2, 7], np.int64)[::2]
    lens = np.array([2, 0, 0, 0, 4, 0], np.int32)[::2]
    w = np.arange(12, dtype=np.float32)[::2]
    expected = pool_reference(rows, idx, offsets=offs, weights=w)
    np.testing.assert_allclose(table.lookup(idx, offsets=offs, weights=w), expected, rtol=1e-5)
    np.testing.assert_allclose(table.lookup(idx, lengths=lens, weights=w), expected, rtol=1e-5)
    two_d = np.asfortranarray(np.array([[0, 1, 2], [3, 4, 5]]))
    assert not two_d.flags.c_contiguous
    np.testing.assert_allclose(table.lookup(two_d, mode="mean"),
                               pool_reference(rows, np.ascontiguousarray(two_d), mode="mean"),
                               rtol=1e-6)
    np.testing.assert_allclose(table.lookup(two_d.T.T[:, ::-1], mode="max"),
                               pool_reference(rows, two_d[:, ::-1], mode="max"), rtol=1e-6)
    # int32 indices with float64 weights, read-only arrays
    ro = np.array([1, 2, 3], np.int32)
    ro.flags.writeable = False
    out = table.lookup(ro, lengths=np.array([3]), weights=np.array([0.5, 0.25, 2.0]))
    np.testing.assert_allclose(out, pool_reference(rows, [1, 2, 3], lengths=[3],
                                                   weights=[0.5, 0.25, 2.0]), rtol=1e-5)


def test_errors_leave_the_table_usable(table: EmbeddingTable) -> None:
    good = table.lookup(np.array([1, 2]), offsets=np.array([0]))
    for _ in range(3):
        with pytest.raises(IndexError):
            table.lookup(np.array([1, 200]), offsets=np.array([0]))
        with pytest.raises(ValueError):
            table.lookup(np.array([1, 2]), offsets=np.array([1]))
    np.testing.assert_array_equal(table.lookup(np.array([1, 2]), offsets=np.array([0])), good)


def test_collection_type_errors() -> None:
    coll = EmbeddingCollection([np.ones((3, 2), np.float32)])
    with pytest.raises(TypeError):
        coll.lookup([np.array([0.0])], offsets=[np.array([0])])
    with pytest.raises(IndexError):
        coll.lookup([np.array([-1])], offsets=[np.array([0])])


def _misaligned(values: np.ndarray, shift: int) -> np.ndarray:
    """A C-contiguous copy of ``values`` that starts ``shift`` bytes into its buffer: not
    aligned for its dtype when ``shift`` is not a multiple of the item size."""
    buf = np.zeros(values.nbytes + shift, dtype=np.uint8)
    view = buf[shift:].view(values.dtype).reshape(values.shape)
    view[...] = values
    assert view.flags["C_CONTIGUOUS"] and not view.flags["ALIGNED"]
    return view


@pytest.mark.parametrize("shift", [1, 2, 3])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_misaligned_arrays_are_read_correctly(shift: int, index_dtype: type) -> None:
    """Arrays at an odd byte offset (contiguous, not aligned) are copied where the core takes
    them, and the answers are the aligned arrays' (they used to raise PanicException)."""
    table = EmbeddingTable.random(50, 8, seed=3)
    rows = table.to_numpy()
    idx = np.arange(0, 40, 3, dtype=index_dtype)
    offsets = np.array([0, 4, 9], dtype=index_dtype)
    lengths = np.array([4, 5, 5], dtype=index_dtype)
    w = np.linspace(0.5, 2.0, idx.size, dtype=np.float32)
    bad_idx, bad_off, bad_len, bad_w = (_misaligned(a, shift) for a in (idx, offsets, lengths, w))
    want = table.lookup(idx, offsets=offsets, weights=w)
    np.testing.assert_array_equal(table.lookup(bad_idx, offsets=bad_off, weights=bad_w), want)
    np.testing.assert_array_equal(table.lookup(bad_idx, lengths=bad_len, weights=bad_w), want)
    coll = EmbeddingCollection([table, table])
    np.testing.assert_array_equal(coll.lookup([bad_idx, bad_idx], offsets=[bad_off, bad_off]),
                                  coll.lookup([idx, idx], offsets=[offsets, offsets]))
    np.testing.assert_array_equal(recengine.sparse_lengths_sum(rows, bad_idx, bad_len),
                                  recengine.sparse_lengths_sum(rows, idx, lengths))
    np.testing.assert_array_equal(recengine.embedding_bag(rows, bad_idx, bad_off),
                                  recengine.embedding_bag(rows, idx, offsets))
    grad = np.ones((3, 8), dtype=np.float32)
    np.testing.assert_array_equal(
        recengine.embedding_bag_backward(_misaligned(grad, shift), 50, bad_idx, bad_off),
        recengine.embedding_bag_backward(grad, 50, idx, offsets))
    # A misaligned table cannot be read in place: a clear error says how to copy it. A table
    # made from one copies it anyway.
    with pytest.raises(ValueError, match="aligned"):
        recengine.sparse_lengths_sum(_misaligned(rows, shift), idx, lengths)
    np.testing.assert_array_equal(EmbeddingTable(_misaligned(rows, shift)).to_numpy(), rows)


# ---------------------------------------------------------------------------------------------
# hostile values and types (each once accepted silently, or refused with the wrong exception)


@pytest.mark.parametrize("dtype", ["timedelta64[s]", "datetime64[s]", "bool", "float32",
                                   "complex64", "object", "U3"])
def test_indices_that_are_not_integers_are_refused(dtype: str) -> None:
    t = EmbeddingTable.random(10, 4)
    idx = np.array([1, 2]).astype(dtype)
    with pytest.raises(TypeError, match="integer"):
        t.lookup(idx, offsets=np.array([0]))


def test_weights_must_have_the_indices_shape() -> None:
    t = EmbeddingTable.random(10, 4)
    for idx, w in ((np.array([1, 2]), np.ones((2, 1))), (np.array([1, 2]), np.ones((1, 2))),
                   (np.array([[1, 2]]), np.ones(2)), (np.array([1, 2]), np.ones(3))):
        kw = {} if idx.ndim == 2 else {"offsets": np.array([0])}
        with pytest.raises(ValueError, match="shape"):
            t.lookup(idx, weights=w, **kw)
    cached = CachedTable(t, slots=4)
    with pytest.raises(ValueError, match="shape"):
        cached.lookup(np.array([1, 2]), offsets=np.array([0]), weights=np.ones(3))


def test_out_of_range_numbers_are_value_errors() -> None:
    t = EmbeddingTable.random(10, 4)
    for kwargs in ({"num_rows": -5, "dim": 4}, {"num_rows": 5, "dim": 0},
                   {"num_rows": 5, "dim": 4, "seed": -1}, {"num_rows": 5, "dim": 4, "seed": 2**64}):
        with pytest.raises(ValueError, match="must be in"):
            EmbeddingTable.random(**kwargs)
    with pytest.raises(TypeError):
        EmbeddingTable.random(True, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        EmbeddingTable.random(5.0, 4)  # type: ignore[arg-type]
    for pad in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match="padding_idx"):
            t.lookup(np.array([1]), offsets=np.array([0]), padding_idx=pad)
        with pytest.raises(ValueError, match="padding_idx"):
            recengine.functional.embedding_bag(np.ones((3, 2), np.float32), np.array([1]),
                                               np.array([0]), padding_idx=pad)
    with pytest.raises(ValueError, match="out of range"):
        t.lookup(np.array([1]), offsets=np.array([0]), padding_idx=2**62)
    with pytest.raises(ValueError, match="offsets holds"):
        t.lookup(np.array([1, 2]), offsets=np.array([0, 2**63 + 5], np.uint64))
    with pytest.raises(ValueError, match="rows"):
        t.slice((-1, 3))


def test_from_raw_takes_bytes_only() -> None:
    for data in (np.ones((10, 16), np.float32), np.ones((10, 16)), [[1.5] * 16] * 10):
        with pytest.raises(TypeError, match="uint8"):
            EmbeddingTable.from_raw(data, "fp32", 4)
    raw = EmbeddingTable.random(10, 4).raw_rows()
    assert EmbeddingTable.from_raw(raw, "fp32", 4).shape == (10, 4)


@pytest.mark.parametrize("storage", ["int8", "int4"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantizing_non_finite_rows_is_refused(storage: str, bad: float) -> None:
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    x[4, 2] = bad
    with pytest.raises(ValueError, match=r"row 4 holds .*column 2"):
        EmbeddingTable(x, dtype=storage)
    with pytest.raises(ValueError, match="row 4"):
        EmbeddingTable(x.astype(np.float16)).quantize(storage)
    with pytest.raises(ValueError, match="row 4"):
        recengine.reference.quantize_rowwise_reference(x, 8 if storage == "int8" else 4)
    x[4, 2] = 0
    assert EmbeddingTable(x, dtype=storage).shape == (6, 4)


def test_max_mode_treats_nan_as_torch_does(simd_level: str) -> None:
    torch = pytest.importorskip("torch")
    nan, inf = np.nan, np.inf
    w = np.array([[nan, 1, 2], [1, nan, 3], [2, 2, nan], [-inf, 0, inf]], np.float32)
    idx = np.array([0, 2, 2, 0, 1, 2, 2, 1, 3, 0, 3, 1, 1])
    offs = np.array([0, 2, 4, 6, 8, 9, 11])
    for dt in (np.float32, np.float16):
        for pad in (None, 2):
            got = recengine.functional.embedding_bag(w.astype(dt), idx, offs, mode="max",
                                                     padding_idx=pad)
            want = torch.nn.functional.embedding_bag(
                torch.from_numpy(idx), torch.from_numpy(w.astype(dt)), torch.from_numpy(offs),
                mode="max", padding_idx=pad).float().numpy()
            np.testing.assert_array_equal(got, want)
            ref = pool_reference(w.astype(dt), idx, offs, mode="max", padding_idx=pad)
            np.testing.assert_array_equal(got, ref)


def test_core_errors_are_recengine_errors_and_the_builtin_alike() -> None:
    """One hierarchy: whatever the core refuses raises a RecengineError subclass that is also
    the builtin exception a caller expects."""
    import recengine
    from recengine import _core

    table = recengine.EmbeddingTable.random(10, 4, seed=0)
    cases = [
        (lambda: table.lookup(np.array([10]), offsets=np.array([0])), IndexError,
         recengine.RecengineIndexError),
        (lambda: table.lookup(np.array([1]), offsets=np.array([0]), mode="median"), ValueError,
         recengine.RecengineValueError),
        (lambda: _core.Table.random(3, 4, "fp64", 0), TypeError, recengine.RecengineTypeError),
        (lambda: _core.Table.open("/nonexistent/table.bin", 0, 1, 4, "fp32"), OSError,
         recengine.RecengineOSError),
    ]
    for call, builtin, ours in cases:
        with pytest.raises(builtin) as info:
            call()
        assert isinstance(info.value, ours) and isinstance(info.value, recengine.RecengineError)
    for name in ("RecengineError", "RecengineIndexError", "RecengineValueError",
                 "RecengineTypeError", "RecengineMemoryError", "RecengineOSError"):
        assert name in recengine.__all__
    assert issubclass(recengine.RecengineMemoryError, MemoryError)
