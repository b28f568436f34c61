"""The oblivious scan lookup: bit for bit the plain lookup's output in every format and mode,
the same visible trace for any ids of the same shape, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import recengine as rc
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.privacy import record

DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")


def _table(rows: int, dim: int, dtype: str, seed: int = 0) -> rc.EmbeddingTable:
    t = rc.EmbeddingTable(np.random.default_rng(seed).standard_normal((rows, dim),
                                                                      dtype=np.float32))
    return t if dtype == "fp32" else t.quantize(dtype)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), dim=st.integers(1, 17), dtype=st.sampled_from(DTYPES),
       mode=st.sampled_from(["sum", "mean", "max"]), weighted=st.booleans(),
       lengths=st.lists(st.integers(0, 6), min_size=1, max_size=6), data=st.data())
def test_scan_equals_the_plain_lookup_bit_for_bit(rows: int, dim: int, dtype: str, mode: str,
                                                  weighted: bool, lengths: list[int],
                                                  data: st.DataObject) -> None:
    t = _table(rows, dim, dtype)
    n = sum(lengths)
    ids = np.array(data.draw(st.lists(st.integers(0, rows - 1), min_size=n, max_size=n)),
                   dtype=np.int64)
    w = (np.random.default_rng(1).standard_normal(n).astype(np.float32)
         if weighted and mode == "sum" else None)
    lens = np.array(lengths, dtype=np.int64)
    plain = t.lookup(ids, lengths=lens, weights=w, mode=mode)
    scan = t.lookup(ids, lengths=lens, weights=w, mode=mode, oblivious="scan")
    assert plain.view(np.uint32).tolist() == scan.view(np.uint32).tolist()
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int32)
    again = t.lookup(ids.astype(np.int32), offsets=offsets, weights=w, mode=mode,
                     oblivious="scan")
    assert np.array_equal(again.view(np.uint32), plain.view(np.uint32))


def test_the_visible_trace_does_not_depend_on_the_ids() -> None:
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
        t.lookup(np.array([1]), lengths=np.array([1]), oblivious="oram")
    with pytest.raises(ValueError, match="lengths sum"):
        t.lookup(np.array([1]), lengths=np.array([2]), oblivious="scan")
    with pytest.raises(TypeError):
        t.lookup(np.array([1.5]), lengths=np.array([1]), oblivious="scan")
    empty = t.lookup(np.zeros(0, dtype=np.int64), lengths=np.array([0, 0]), oblivious="scan")
    assert empty.shape == (2, 4) and not empty.any()
