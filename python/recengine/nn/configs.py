"""Table configurations in TorchRec's form: ``EmbeddingBagConfig``, ``DataType``, ``PoolingType``.

:class:`EmbeddingBagConfig` has TorchRec's fields in TorchRec's order, with its defaults, so
code written for ``torchrec.EmbeddingBagConfig`` (positional or by keyword) builds the same
tables here. Fields for features recengine does not have (virtual tables, pruning, position
weights) keep TorchRec's defaults and refuse any other value with ``NotImplementedError``.

Example::

    >>> cfg = EmbeddingBagConfig(100, 8, "t1", DataType.FP32, ["f1"])
    >>> cfg.pooling, cfg.feature_names, round(cfg.get_weight_init_max(), 3)
    (<PoolingType.SUM: 'SUM'>, ['f1'], 0.1)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

import torch

__all__ = ["DataType", "EmbeddingBagConfig", "PoolingType", "data_type_to_dtype",
           "dtype_to_data_type"]


class PoolingType(enum.Enum):
    """How a table pools each bag (TorchRec's names; a collection takes SUM or MEAN)."""

    SUM = "SUM"
    MEAN = "MEAN"
    NONE = "NONE"


class DataType(enum.Enum):
    """A table's storage type (TorchRec's names)."""

    FP32 = "FP32"
    FP16 = "FP16"
    BF16 = "BF16"
    INT64 = "INT64"
    INT32 = "INT32"
    INT8 = "INT8"
    UINT8 = "UINT8"
    INT4 = "INT4"
    INT2 = "INT2"
    NFP8 = "NFP8"


_TORCH_OF = {DataType.FP32: torch.float32, DataType.FP16: torch.float16,
             DataType.BF16: torch.bfloat16}


def data_type_to_dtype(data_type: DataType) -> torch.dtype:
    """The torch dtype of a float table's weight: FP32, FP16 or BF16.

    Raises:
        NotImplementedError: an integer or 8-bit-float type (quantized tables are
            :class:`recengine.nn.QuantEmbeddingBag`'s).
    """
    try:
        return _TORCH_OF[DataType(data_type)]
    except KeyError:
        raise NotImplementedError(
            f"a trainable table of {DataType(data_type).name} has no counterpart here; use "
            "FP32, FP16 or BF16 (quantized inference tables: recengine.nn.QuantEmbeddingBag)"
        ) from None


def dtype_to_data_type(dtype: torch.dtype) -> DataType:
    """The :class:`DataType` of a float32, float16 or bfloat16 weight."""
    for data_type, torch_dtype in _TORCH_OF.items():
        if torch_dtype == dtype:
            return data_type
    raise ValueError(f"no DataType for {dtype}; expected float32, float16 or bfloat16")


#: Fields of TorchRec's config that name features recengine does not implement, with the
#: only value accepted (TorchRec's default).
_UNSUPPORTED_DEFAULTS = {
    "num_embeddings_post_pruning": None,
    "need_pos": False,
    "total_num_buckets": None,
    "use_virtual_table": False,
    "virtual_table_eviction_policy": None,
    "enable_embedding_update": False,
    "stash_weights": False,
}


@dataclass
class EmbeddingBagConfig:
    """One table of an :class:`~recengine.nn.EmbeddingBagCollection`, with TorchRec's fields in
    TorchRec's order.

    Args:
        num_embeddings: rows.
        embedding_dim: D.
        name: the table's name (its state_dict key).
        data_type: FP32, FP16 or BF16 (the weight's dtype).
        feature_names: the input keys that look this table up, each giving D output columns.
            Empty means one feature named as the table (TorchRec's rule, applied by the
            collection).
        weight_init_max, weight_init_min: the uniform init range; default
            ``+-sqrt(1 / num_embeddings)``.
        num_embeddings_post_pruning: TorchRec's pruning (None only).
        init_fn: called on each new weight to initialise it; default uniform in the range.
        need_pos: TorchRec's position weighting (False only).
        input_dim, total_num_buckets, use_virtual_table, virtual_table_eviction_policy,
            enable_embedding_update, stash_weights: TorchRec's fields for features recengine
            does not have: each keeps its default (``input_dim`` is free, as in TorchRec).
        pooling: SUM or MEAN (a :class:`PoolingType` or its name).
        dtype: the weight's torch dtype, an alternative to ``data_type`` (keyword only in
            effect: it comes after TorchRec's fields).

    Raises:
        ValueError: fewer than 1 row or column, or a pooling name that is not one.
        NotImplementedError: a non-default value for an unsupported field.
    """

    num_embeddings: int
    embedding_dim: int
    name: str = ""
    data_type: DataType = DataType.FP32
    feature_names: list[str] = field(default_factory=list)
    weight_init_max: Optional[float] = None
    weight_init_min: Optional[float] = None
    num_embeddings_post_pruning: Optional[int] = None
    init_fn: Optional[Callable[[torch.Tensor], Optional[torch.Tensor]]] = None
    need_pos: bool = False
    input_dim: Optional[int] = None
    total_num_buckets: Optional[int] = None
    use_virtual_table: bool = False
    virtual_table_eviction_policy: Any = None
    enable_embedding_update: bool = False
    stash_weights: bool = False
    pooling: PoolingType = PoolingType.SUM
    dtype: Optional[torch.dtype] = None

    def __post_init__(self) -> None:
        if self.num_embeddings < 1 or self.embedding_dim < 1:
            raise ValueError("a table needs num_embeddings >= 1 and embedding_dim >= 1, got "
                             f"{self.num_embeddings} and {self.embedding_dim}")
        if isinstance(self.pooling, str):
            self.pooling = PoolingType(self.pooling.upper())
        if isinstance(self.data_type, str):
            self.data_type = DataType(self.data_type.upper())
        if self.dtype is not None:
            self.data_type = dtype_to_data_type(self.dtype)
        for name, default in _UNSUPPORTED_DEFAULTS.items():
            if getattr(self, name) != default:
                raise NotImplementedError(
                    f"{name}={getattr(self, name)!r}: TorchRec's {name} has no counterpart "
                    f"in recengine (only {default!r})")
        if self.init_fn is None:
            self.init_fn = partial(torch.nn.init.uniform_, a=self.get_weight_init_min(),
                                   b=self.get_weight_init_max())

    def get_weight_init_max(self) -> float:
        return math.sqrt(1 / self.num_embeddings) if self.weight_init_max is None \
            else self.weight_init_max

    def get_weight_init_min(self) -> float:
        return -math.sqrt(1 / self.num_embeddings) if self.weight_init_min is None \
            else self.weight_init_min

    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The weight's torch dtype."""
        return data_type_to_dtype(self.data_type)
