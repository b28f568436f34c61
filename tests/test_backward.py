"""The core's backward (``embedding_bag_backward``, dense and sparse) against the numpy
reference ``pool_backward_reference``, over modes, index widths, bag layouts, padding, thread
counts and bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import recengine
from hypothesis import given
from hypothesis import strategies as st
from recengine.reference import pool_backward_reference


@st.composite
def backward_cases(draw: st.DrawFn) -> dict[str, Any]:
    num_rows = draw(st.integers(1, 200))
    dim = draw(st.sampled_from([1, 3, 8, 16, 17, 64, 100]))
    mode = draw(st.sampled_from(["sum", "mean"]))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Few distinct rows make long runs of one row; many make runs of one.
    hot = draw(st.integers(1, num_rows))
    if draw(st.booleans()):
        bags, per_bag = draw(st.integers(0, 12)), draw(st.integers(0, 8))
        indices = rng.integers(0, hot, (bags, per_bag)).astype(index_dtype)
        kw: dict[str, Any] = {}
    else:
        lengths = draw(st.lists(st.integers(0, 10), max_size=20))
        bags = len(lengths)
        indices = rng.integers(0, hot, sum(lengths)).astype(index_dtype)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(index_dtype)
        last = draw(st.booleans())
        kw = {"offsets": starts if last else starts[:-1], "include_last_offset": last}
    if mode == "sum" and draw(st.booleans()):
        kw["weights"] = rng.standard_normal(indices.shape).astype(np.float32)
    kw["padding_idx"] = draw(st.one_of(st.none(), st.integers(-num_rows, num_rows - 1)))
    grad = rng.standard_normal((bags, dim)).astype(np.float32)
    return dict(grad=grad, num_rows=num_rows, indices=indices, mode=mode, **kw)


@given(case=backward_cases(), threads=st.sampled_from([1, 2]))
def test_backward_matches_reference(case: dict[str, Any], threads: int,
                                    restore_threads: None) -> None:
    recengine.set_num_threads(threads)
    want = pool_backward_reference(**case)
    dense = recengine.embedding_bag_backward(**case)
    np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-5)
    rows, values = recengine.embedding_bag_backward(**case, sparse=True)
    assert rows.dtype == np.int64 and values.dtype == np.float32
    # One entry per non-padding lookup, in lookup order; equal rows summed give the dense rows.
    flat = np.asarray(case["indices"]).reshape(-1)
    pad = case["padding_idx"]
    kept = flat if pad is None else flat[flat != pad % case["num_rows"]]
    np.testing.assert_array_equal(rows, kept)
    summed = np.zeros_like(want)
    np.add.at(summed, rows, values)
    np.testing.assert_allclose(summed, want, rtol=1e-5, atol=1e-5)
    untouched = np.setdiff1d(np.arange(case["num_rows"]), rows)
    assert not dense[untouched].any()


def test_large_call_is_split_and_same_for_every_thread_count(restore_threads: None) -> None:
    rng = np.random.default_rng(0)
    bags, per_bag, num_rows, dim = 2048, 40, 3000, 32
    idx = (rng.zipf(1.2, bags * per_bag) % num_rows).astype(np.int64)
    grad = rng.standard_normal((bags, dim)).astype(np.float32)
    offsets = np.arange(0, bags * per_bag, per_bag)
    results = []
    for threads in (1, 2):
        recengine.set_num_threads(threads)
        results.append(recengine.embedding_bag_backward(grad, num_rows, idx, offsets,
                                                        mode="mean"))
    # Each row is summed in lookup order by one thread: bit-identical for any thread count.
    np.testing.assert_array_equal(results[0], results[1])
    want = pool_backward_reference(grad, num_rows, idx, offsets, mode="mean")
    np.testing.assert_allclose(results[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(indices=[0, 5]), IndexError),
        (dict(indices=[0, -1]), IndexError),
        (dict(mode="max"), ValueError),
        (dict(weights=[1.0]), ValueError),
        (dict(mode="mean", weights=[1.0, 1.0]), ValueError),
        (dict(grad=np.ones((2, 4), np.float32)), ValueError),
        (dict(offsets=[1]), ValueError),
        (dict(padding_idx=5), ValueError),
        (dict(num_rows=-1), ValueError),
        (dict(indices=[0.5, 1.0]), TypeError),
    ],
)
def test_bad_input_raises(kw: dict[str, Any], error: type) -> None:
    args = dict(grad=np.ones((1, 4), np.float32), num_rows=5, indices=[0, 1], offsets=[0])
    args.update(kw)
    with pytest.raises(error):
        recengine.embedding_bag_backward(**args)


def test_dense_out_must_fit() -> None:
    from recengine import _core

    g = np.ones((1, 4), np.float32)
    with pytest.raises(ValueError):
        _core.pool_backward(g, 5, np.array([0]), np.array([0]), out=np.zeros((5, 3), np.float32))
    with pytest.raises(TypeError):
        _core.pool_backward(g, 5, np.array([0]), np.array([0]), out=np.zeros((5, 4)))
