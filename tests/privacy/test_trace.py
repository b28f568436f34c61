"""The access hook: every lookup path records the rows it read, in order, with its bags and
its request; nothing is recorded (or slowed) with no recorder active."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import recengine as rc
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine import _access
from recengine.functional import embedding_bag, sparse_lengths_sum
from recengine.privacy import Recorder, record

TABLE = np.arange(40, dtype=np.float32).reshape(10, 4)


def test_table_lookups_record_rows_bags_and_requests() -> None:
    t = rc.EmbeddingTable(TABLE)
    with record() as rec:
        rec.name(t, "items")
        with rec.request("a"):
            t.lookup(np.array([1, 2, 3]), offsets=np.array([0, 2]))
            t.lookup(np.array([[4, 5], [6, 7]]))
        with rec.request("b"):
            t.lookup(np.array([9, 0]), offsets=np.array([0, 1, 2]), include_last_offset=True)
        t.lookup(np.array([8]), lengths=np.array([1]))
    got = [(a.request, a.table, a.rows.tolist(), a.lengths.tolist()) for a in rec.accesses]
    assert got == [("a", "items", [1, 2, 3], [2, 1]), ("a", "items", [4, 5, 6, 7], [2, 2]),
                   ("b", "items", [9, 0], [1, 1]), (None, "items", [8], [1])]
    seen = rec.rows_by_request()
    assert seen["a"]["items"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert _access.RECORDERS == []


def test_every_lookup_path_is_recorded() -> None:
    torch = pytest.importorskip("torch")
    import recengine.models as rm
    from recengine import nn as rnn

    c = rc.EmbeddingCollection([rc.EmbeddingTable(TABLE), rc.EmbeddingTable(TABLE[:5])])
    bag = rnn.EmbeddingBag(10, 4, mode="sum")
    with record() as rec:
        c.lookup([np.array([1, 2]), np.array([4])], lengths=[np.array([2]), np.array([1])])
        embedding_bag(TABLE, np.array([3, 4]), np.array([0, 1]))
        sparse_lengths_sum(TABLE, np.array([5]), np.array([1]))
        with torch.inference_mode():
            bag(torch.tensor([[7, 8]]))
    rows = [(a.table, a.rows.tolist()) for a in rec.accesses]
    # the functional ops read the same array: one table
    assert rows == [("table0", [1, 2]), ("table1", [4]), ("table2", [3, 4]), ("table2", [5]),
                    ("table3", [7, 8])]
    # a whole model: each feature's ids, read from its table (named by the collection)
    model = rm.build("din", scale=0.001, seed=0)
    batch = model.sample_batch(3, seed=1)
    with record() as rec, torch.inference_mode():
        model(batch)
    read = sorted(np.concatenate([a.rows for a in rec.accesses]).tolist())
    want = sorted(np.concatenate([x.numpy().reshape(-1) for x in batch.sparse]).tolist())
    assert read == want
    assert {a.table for a in rec.accesses} <= {f"t{i}" for i in range(len(model.tables))} | {
        f"table{i}" for i in range(len(model.tables))}


def test_nothing_is_recorded_outside_and_an_error_leaves_no_recorder() -> None:
    t = rc.EmbeddingTable(TABLE)
    rec = Recorder()
    t.lookup(np.array([1]), lengths=np.array([1]))
    with pytest.raises(RuntimeError):
        with record(rec):
            t.lookup(np.array([2]), lengths=np.array([1]))
            raise RuntimeError("boom")
    t.lookup(np.array([3]), lengths=np.array([1]))
    assert [a.rows.tolist() for a in rec.accesses] == [[2]] and _access.RECORDERS == []
    with pytest.raises(IndexError), record(rec):  # a failed lookup read nothing recorded
        t.lookup(np.array([99]), lengths=np.array([1]))
    assert len(rec.accesses) == 1


def test_requests_are_per_thread() -> None:
    t = rc.EmbeddingTable(TABLE)
    with record() as rec:
        def serve(user: int) -> None:
            with rec.request(user):
                for _ in range(20):
                    t.lookup(np.array([user]), lengths=np.array([1]))

        threads = [threading.Thread(target=serve, args=(u,)) for u in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    seen = rec.rows_by_request()
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(seen[u]["table0"].tolist() == [u] * 20 for u in range(4))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=6), min_size=1, max_size=8))
def test_recorded_rows_are_the_indices_in_order(bags: list[list[int]]) -> None:
    t = rc.EmbeddingTable(TABLE)
    flat = np.array([i for b in bags for i in b], dtype=np.int64)
    lengths = np.array([len(b) for b in bags], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    with record() as rec:
        t.lookup(flat, lengths=lengths)
        t.lookup(flat.astype(np.int32), offsets=offsets)
    for a in rec.accesses:
        assert a.rows.tolist() == flat.tolist() and a.lengths.tolist() == lengths.tolist()
