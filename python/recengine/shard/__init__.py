"""recengine.shard: embedding tables sharded over servers (as in the scale-out inference study,
arXiv 2011.02084).

Plan where each table's rows live (:func:`plan`, five strategies), then look tables up sharded
in this process (:class:`ShardedEmbedding`) or across processes and machines on Ray
(:class:`RayShardedEmbedding`, needs ``pip install "recengine[shard]"``). ``recengine shard``
runs the study (:mod:`recengine.shard.study`).

Example::

    >>> import numpy as np, recengine
    >>> from recengine.shard import ShardedEmbedding, plan
    >>> tables = [recengine.EmbeddingTable.random(1000, 16, seed=s) for s in range(4)]
    >>> p = plan(tables, 2, strategy="capacity")
    >>> ShardedEmbedding(p, tables).lookup([np.arange(4)] * 4, lengths=[np.array([4])] * 4).shape
    (1, 64)
"""

from .distributed import RayShardedEmbedding, ShardUnavailableError, save_tables
from .inprocess import ShardedEmbedding, shard_stats
from .plan import (
    SPLITS,
    STRATEGIES,
    CostModel,
    Piece,
    ShardPlan,
    ShardTable,
    TablePlacement,
    measure_access,
    plan,
)

__all__ = [
    "SPLITS",
    "STRATEGIES",
    "CostModel",
    "Piece",
    "RayShardedEmbedding",
    "ShardPlan",
    "ShardTable",
    "ShardUnavailableError",
    "ShardedEmbedding",
    "TablePlacement",
    "measure_access",
    "plan",
    "save_tables",
    "shard_stats",
]
