"""Where a model's embedding tables live on memory nodes, and how a compute node asks for them.

The model's tables are placed on ``memory_nodes`` by the sharding planner
(:func:`recengine.shard.plan`, any strategy; row- and column-wise pieces included). A query's
lookups are routed by the core's router in **groups** that share a batch: one group for every
pooled feature that is its table's only reader (all of them in one routed call, so each
memory node gets one request per query), and one group of its own for each other feature (a
sequence, whose ``L`` ids per sample are ``B x L`` bags of one row, or a table read by more
than one feature). :meth:`MemoryPlan.requests` turns a batch into each memory node's work
items and :meth:`MemoryPlan.assemble` their pooled blocks back into the model's
``embed(batch)`` dict, bit for bit what the model computes itself where each table is one
piece (row-split tables add partial sums in another order: equal to rounding).

Example::

    >>> import recengine.models as rm
    >>> m = rm.build("ncf", scale=0.01)
    >>> mp = MemoryPlan.for_model(m, memory_nodes=2, strategy="capacity")
    >>> b = m.example_input(3)
    >>> work, keys = mp.requests(b)
    >>> sorted(work) == [0, 1]
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..shard.plan import ShardPlan, ShardTable, plan

__all__ = ["MemoryPlan", "WorkItem"]

#: One memory-node work item: ``(table, piece, ids, offsets, weights, mode)``, ``table`` the
#: model's table index (the memory node keys its pieces by it).
WorkItem = tuple[int, int, np.ndarray, np.ndarray, Any, str]


@dataclass
class _Group:
    """Features routed together: ``tables`` (model table indices, in the sub-router's order),
    one feature each, ``sequence`` for a single sequence feature."""

    features: list[int]
    tables: list[int]
    sequence: bool
    router: Any


class MemoryPlan:
    """A model's tables on memory nodes (:attr:`shard_plan`) and its lookups' routing groups.

    Args:
        model: a :class:`~recengine.models.RecModel`.
        shard_plan: the planner's placement of the model's tables, in the model's table order
            (names ``t0``, ``t1`` ...).

    Raises:
        ValueError: the plan does not hold the model's tables.
    """

    def __init__(self, model: Any, shard_plan: ShardPlan) -> None:
        shapes = [(t.num_rows, t.dim) for t in model.tables]
        got = [(p.table.num_rows, p.table.dim) for p in shard_plan.placements]
        if got != shapes:
            raise ValueError(f"the plan's tables {got} are not the model's {shapes}")
        self.model_name = model.name
        self.shard_plan = shard_plan
        self.features = list(model.features)
        self.dims = [t.dim for t in model.tables]
        readers: dict[int, list[int]] = {}
        for i, f in enumerate(self.features):
            readers.setdefault(f.table, []).append(i)
        main = [i for i, f in enumerate(self.features)
                if not f.sequence and len(readers[f.table]) == 1]
        groups = [main] if main else []
        groups += [[i] for i in range(len(self.features)) if i not in set(main)]
        self.groups = [self._group(g) for g in groups]

    @classmethod
    def for_model(cls, model: Any, memory_nodes: int, strategy: str = "load",
                  batch: int = 1, **plan_args: Any) -> MemoryPlan:
        """Plan ``model``'s tables on ``memory_nodes`` with the sharding planner's
        ``strategy`` (:data:`recengine.shard.STRATEGIES`; ``plan_args`` go to
        :func:`recengine.shard.plan`)."""
        lookups: dict[int, float] = {}
        for f in model.features:
            lookups[f.table] = lookups.get(f.table, 0.0) + f.length
        specs = [ShardTable(f"t{i}", t.num_rows, t.dim, lookups=lookups.get(i, 0.0))
                 for i, t in enumerate(model.tables)]
        return cls(model, plan(specs, memory_nodes, strategy=strategy, batch=batch,
                               **plan_args))

    @property
    def memory_nodes(self) -> int:
        return self.shard_plan.num_shards

    def pieces(self) -> dict[int, list[tuple[int, int, tuple[int, int], tuple[int, int]]]]:
        """Each memory node's pieces: ``(table, piece, rows, cols)``."""
        out: dict[int, list[tuple[int, int, tuple[int, int], tuple[int, int]]]] = {
            s: [] for s in range(self.memory_nodes)}
        for t, pl in enumerate(self.shard_plan.placements):
            for p, q in enumerate(pl.pieces):
                out[q.shard].append((t, p, q.rows, q.cols))
        return out

    def _group(self, features: list[int]) -> _Group:
        tables = [self.features[i].table for i in features]
        sub = ShardPlan(self.shard_plan.strategy, self.shard_plan.num_shards,
                        [self.shard_plan.placements[t] for t in tables])
        return _Group(features, tables, self.features[features[0]].sequence, sub.router())

    def requests(self, batch: Any) -> tuple[dict[int, list[WorkItem]],
                                            dict[int, list[tuple[int, Any, int, int]]]]:
        """Each memory node's work items for ``batch`` (a :class:`~recengine.models.Batch`),
        and for each, where its block goes: ``(group, routed batch, sub-router table,
        piece)`` per item, in the same order.

        Raises:
            IndexError: an id out of its table's range (the router checks every id).
        """
        work: dict[int, list[WorkItem]] = {}
        keys: dict[int, list[tuple[int, Any, int, int]]] = {}
        for g, group in enumerate(self.groups):
            ids, lengths = [], []
            for i in group.features:
                x = batch.sparse[i]
                flat = np.ascontiguousarray(x.numpy(), dtype=np.int64).reshape(-1)
                ids.append(flat)
                bags, per = (flat.size, 1) if group.sequence else (x.shape[0], x.shape[1])
                lengths.append(np.full(bags, per, dtype=np.int64))
            routed = group.router.route(ids, lengths=lengths, mode="sum")
            for shard, items in routed.by_shard(group.router).items():
                for lt, p, idx, offs, w, mode in items:
                    # int32 on the wire where they fit (every table here has < 2**31 rows):
                    # half the bytes of a request.
                    if offs[-1] < 2**31:
                        idx, offs = idx.astype(np.int32), offs.astype(np.int32)
                    work.setdefault(shard, []).append((group.tables[lt], p, idx, offs, w, mode))
                    keys.setdefault(shard, []).append((g, routed, lt, p))
        return work, keys

    def assemble(self, n: int, keys: dict[int, list[tuple[int, Any, int, int]]],
                 blocks: Mapping[int, Sequence[np.ndarray]]) -> dict[str, torch.Tensor]:
        """The model's ``embed(batch)`` for a batch of ``n`` samples from each memory node's
        blocks (in the order of :meth:`requests`' items)."""
        per_group: dict[int, tuple[Any, dict[tuple[int, int], np.ndarray]]] = {}
        for shard, ks in keys.items():
            for (g, routed, lt, p), block in zip(ks, blocks[shard]):
                per_group.setdefault(g, (routed, {}))[1][(lt, p)] = block
        out: dict[str, torch.Tensor] = {}
        for g, group in enumerate(self.groups):
            if g not in per_group:
                raise RuntimeError(f"no blocks came back for lookup group {g}")
            routed, got = per_group[g]
            merged = torch.from_numpy(routed.merge(group.router, got))
            col = 0
            for i, t in zip(group.features, group.tables):
                f, d = self.features[i], self.dims[t]
                part = merged[:, col:col + d]
                out[f.name] = part.reshape(n, f.length, d) if group.sequence else part
                col += d
        return {f.name: out[f.name] for f in self.features}

    @staticmethod
    def request_bytes(work: dict[int, list[WorkItem]]) -> int:
        """Bytes of ids, offsets and weights a query's requests carry."""
        return sum(i[2].nbytes + i[3].nbytes + (0 if i[4] is None else i[4].nbytes)
                   for items in work.values() for i in items)
