"""MemoryPlan: a model's lookups routed to memory nodes and merged back give the model's own
embeddings (bit for bit where tables are whole; to rounding where they are split)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import recengine.models as rm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.disagg import MemoryPlan
from recengine.shard import STRATEGIES, Piece, ShardPlan
from recengine.shard.plan import TablePlacement
from recengine.table import EmbeddingTable

_MODELS: dict[str, Any] = {}


def _model(name: str) -> Any:
    if name not in _MODELS:
        _MODELS[name] = rm.build(name, scale=0.01, seed=3)
    return _MODELS[name]


def _serve(model: Any, mp: MemoryPlan, batch: Any) -> dict[str, torch.Tensor]:
    """The memory nodes' side in this process: each node's pieces sliced from the model's
    tables, answering its work items."""
    tables = [EmbeddingTable(model._weight(t).detach().numpy()) for t in range(len(model.tables))]
    nodes = {n: {(t, p): tables[t].slice(rows, cols) for t, p, rows, cols in pieces}
             for n, pieces in mp.pieces().items()}
    work, keys = mp.requests(batch)
    blocks = {n: [nodes[n][(t, p)].lookup(ids, offs, weights=w, mode=mode,
                                          include_last_offset=True)
                  for t, p, ids, offs, w, mode in items] for n, items in work.items()}
    return mp.assemble(len(batch), keys, blocks)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["rmc1", "wnd", "ncf", "din", "dien"]),
       nodes=st.integers(1, 5), strategy=st.sampled_from(STRATEGIES),
       n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_routed_lookups_are_the_models_own(name: str, nodes: int, strategy: str, n: int,
                                           seed: int) -> None:
    model = _model(name)
    mp = MemoryPlan.for_model(model, nodes, strategy=strategy)
    batch = model.sample_batch(n, seed=seed)
    got = _serve(model, mp, batch)
    with torch.inference_mode():
        want = model.embed(batch)
        assert set(got) == set(want)
        for k in want:
            assert got[k].shape == want[k].shape
            assert torch.equal(got[k], want[k]), k  # whole tables: the same sums, in order
        assert torch.equal(model.dense_part(got, batch.dense), model(batch))


@pytest.mark.parametrize("split", ["row", "column"])
def test_split_tables_merge_to_the_same_embeddings(split: str) -> None:
    model = _model("dien")  # pooled, sequence and shared tables
    placements = []
    for spec in MemoryPlan.for_model(model, 1).shard_plan.tables:
        r, d = spec.num_rows, spec.dim
        pieces = ([Piece(0, (0, r // 3), (0, d)), Piece(1, (r // 3, r), (0, d))]
                  if split == "row" else
                  [Piece(0, (0, r), (0, d // 2)), Piece(1, (0, r), (d // 2, d))])
        placements.append(TablePlacement(spec, split, pieces))
    mp = MemoryPlan(model, ShardPlan("manual", 2, placements))
    batch = model.sample_batch(17, seed=1)
    got = _serve(model, mp, batch)
    with torch.inference_mode():
        want = model.embed(batch)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    work, _ = mp.requests(batch)
    assert sorted(work) == [0, 1]  # both nodes asked


def test_groups_and_bytes() -> None:
    mp = MemoryPlan.for_model(_model("dien"), 2)
    # one routed call for the pooled features with a table of their own, one group for each
    # sequence and for each feature of a table two features read
    assert mp.groups[0].features and not mp.groups[0].sequence
    assert sum(g.sequence for g in mp.groups) == 2 and len(mp.groups) == 5
    rm1 = _model("rmc1")
    b = rm1.sample_batch(4, seed=0)
    work, _ = MemoryPlan.for_model(rm1, 2).requests(b)
    ids = sum(f.length for f in rm1.features) * 4
    # int32 ids and offsets (bags + 1 per table) on the wire
    assert MemoryPlan.request_bytes(work) == 4 * ids + 4 * 5 * len(rm1.tables)
    assert all(i[2].dtype == np.int32 for items in work.values() for i in items)


def test_bad_plans_and_ids_are_refused() -> None:
    model = _model("ncf")
    other = MemoryPlan.for_model(_model("rmc1"), 2).shard_plan
    with pytest.raises(ValueError, match="not the model's"):
        MemoryPlan(model, other)
    mp = MemoryPlan.for_model(model, 2)
    b = model.sample_batch(3, seed=0)
    b.sparse[0][1, 0] = model.tables[model.features[0].table].num_rows  # one past the end
    with pytest.raises(IndexError):
        mp.requests(b)
    with pytest.raises(ValueError, match="strategy"):
        MemoryPlan.for_model(model, 2, strategy="nope")
