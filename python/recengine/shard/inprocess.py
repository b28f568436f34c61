"""``ShardedEmbedding``: tables split by a plan, pooled in this process on the core's threads."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .. import _core
from ..table import EmbeddingTable
from .plan import ShardPlan

__all__ = ["ShardedEmbedding", "shard_stats"]


class ShardedEmbedding:
    """The tables of ``plan``, each piece an owned table of its rows and columns, looked up as
    one collection: a batch is routed to the pieces holding its rows, every piece's share is
    pooled on the core's threads at once, and the shares are merged. The output equals
    ``EmbeddingCollection(tables).lookup(...)`` (sums of row-wise pieces add in another order,
    so they agree to float rounding).

    Args:
        plan: a :class:`~recengine.shard.ShardPlan` for ``tables``.
        tables: the ``EmbeddingTable`` objects, in the plan's order.

    Example::

        >>> import numpy as np, recengine
        >>> from recengine.shard import ShardedEmbedding, plan
        >>> tables = [recengine.EmbeddingTable.random(1000, 8, seed=s) for s in range(3)]
        >>> emb = ShardedEmbedding(plan(tables, 2, strategy="cost"), tables)
        >>> emb.lookup([np.array([1, 2, 3])] * 3, lengths=[np.array([2, 1])] * 3).shape
        (2, 24)
    """

    def __init__(self, plan: ShardPlan, tables: Sequence[EmbeddingTable]) -> None:
        if len(tables) != len(plan.placements):
            raise ValueError(f"the plan places {len(plan.placements)} tables, "
                             f"{len(tables)} given")
        for i, (t, p) in enumerate(zip(tables, plan.placements)):
            if (t.num_rows, t.dim) != (p.table.num_rows, p.table.dim):
                raise ValueError(f"table {i} is {t.num_rows} x {t.dim} but the plan has "
                                 f"{p.table.num_rows} x {p.table.dim}")
        self.plan = plan
        self._c = _core.ShardedCollection([t._t for t in tables], *plan.to_core())
        self._router = plan.router()

    @property
    def dims(self) -> list[int]:
        return list(self._c.dims)

    def lookup(self, indices: Sequence[Any], offsets: Optional[Sequence[Any]] = None,
               lengths: Optional[Sequence[Any]] = None,
               weights: Optional[Sequence[Any]] = None, mode: str = "sum",
               include_last_offset: bool = False) -> np.ndarray:
        """Pool every table for the same batch (arguments as
        :meth:`recengine.EmbeddingCollection.lookup`); returns ``[B, sum(dims)]`` float32."""
        return self._c.lookup(list(indices), None if offsets is None else list(offsets),
                              None if lengths is None else list(lengths),
                              None if weights is None else list(weights), mode,
                              include_last_offset)

    def calls(self, indices: Sequence[Any], offsets: Optional[Sequence[Any]] = None,
              lengths: Optional[Sequence[Any]] = None) -> dict[int, int]:
        """How many lookups each shard receives for this batch (shards it does not call are
        left out): what one shard call would carry."""
        routed = self._router.route(list(indices), None if offsets is None else list(offsets),
                                    None if lengths is None else list(lengths))
        return shard_stats(routed, self._router)

    def piece(self, table: int, piece: int) -> EmbeddingTable:
        """Piece ``piece`` of table ``table`` as a table of its own (shared, not copied)."""
        return EmbeddingTable._wrap(self._c.piece(table, piece))


def shard_stats(routed: Any, router: Any) -> dict[int, int]:
    """Lookups per involved shard of a routed batch (``_core.Routed``)."""
    return {shard: int(sum(len(item[2]) for item in work))
            for shard, work in routed.by_shard(router).items()}
