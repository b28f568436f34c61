"""``EmbeddingBagCollection``: many tables, keyed jagged input, one core call.

Mirrors TorchRec's ``EmbeddingBagCollection`` (``EmbeddingBagConfig``, ``PoolingType``, a
``KeyedJaggedTensor`` in and a ``KeyedTensor`` out, state_dict keys
``embedding_bags.<table>.weight``) for users coming from it, but pools every feature of every
table in one multithreaded call of the core (``_core.KeyedTables``) straight from the batch's
flat ids, with no per-table Python work.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .. import _core
from . import _op, hugepages
from .hugepages import on_huge_pages
from .jagged import KeyedJaggedTensor, KeyedTensor, as_kjt

__all__ = ["EmbeddingBagCollection", "EmbeddingBagConfig", "PoolingType"]

#: Weight dtypes the core pools, with its names for them.
_CORE_DTYPES = _op.CORE_DTYPES


class PoolingType(enum.Enum):
    """How a table pools each bag (TorchRec's names)."""

    SUM = "SUM"
    MEAN = "MEAN"


@dataclass
class EmbeddingBagConfig:
    """One table of an :class:`EmbeddingBagCollection` (TorchRec's fields).

    Args:
        num_embeddings: rows.
        embedding_dim: D.
        name: the table's name (its state_dict key).
        feature_names: the keys of the input that look this table up (each gives D columns).
        pooling: SUM or MEAN.
        weight_init_min, weight_init_max: uniform init range; default +-sqrt(1/num_embeddings).
        dtype: the weight's torch dtype (float32, float16 or bfloat16 run on the core).
    """

    num_embeddings: int
    embedding_dim: int
    name: str = ""
    feature_names: list[str] = field(default_factory=list)
    pooling: PoolingType = PoolingType.SUM
    weight_init_min: Optional[float] = None
    weight_init_max: Optional[float] = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.num_embeddings < 1 or self.embedding_dim < 1:
            raise ValueError("a table needs num_embeddings >= 1 and embedding_dim >= 1")
        if isinstance(self.pooling, str):
            self.pooling = PoolingType(self.pooling.upper())
        if not self.feature_names:
            raise ValueError(f"table {self.name!r} has no feature_names")


def _cat(parts: list[Tensor]) -> Tensor:
    """``torch.cat`` that does not copy a single part (sparse gradients can be large)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _Keyed(torch.autograd.Function):
    """Forward: one ``KeyedTables.pool`` call. Backward: the core's scatter-add per block into each
    table's gradient (dense, or sparse for tables whose module has ``sparse=True``)."""

    @staticmethod
    def forward(ctx: Any, ebc: EmbeddingBagCollection, kjt: KeyedJaggedTensor,  # type: ignore[override]
                slots: list[int], *weights: Tensor) -> Tensor:
        ctx.ebc, ctx.kjt, ctx.slots = ebc, kjt, slots
        out = ebc._pool(kjt, slots, list(weights))
        if out is None:  # only if another thread moved a weight since forward checked it
            raise RuntimeError("a weight left the CPU or changed dtype during the forward")
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        weights = ctx.ebc._weights()
        return (None, None, None, *ctx.ebc._weight_grads(ctx.kjt, ctx.slots, grad, weights,
                                                         ctx.needs_input_grad[3:]))


class EmbeddingBagCollection(torch.nn.Module):
    """Many embedding tables looked up by keyed jagged features, pooled in one core call.

    Args:
        tables: the tables' :class:`EmbeddingBagConfig`.
        is_weighted: the input carries per-id weights (SUM tables only).
        device: where the weights live: on the CPU (the default) on huge pages
            (:mod:`recengine.nn.hugepages`); CUDA weights run torch's own kernel per feature.
        sparse: make the weights' gradients sparse (uncoalesced, as torch's).

    ``forward(features)`` takes a :class:`KeyedJaggedTensor` (ours, or TorchRec's) whose keys
    include every table's feature names, and returns a :class:`KeyedTensor` with one ``[B, D]``
    block per feature, in table order then feature order: ``[B, sum(D)]`` in all.

    Example::

        >>> ebc = EmbeddingBagCollection([
        ...     EmbeddingBagConfig(100, 8, "t1", ["f1"]),
        ...     EmbeddingBagConfig(50, 4, "t2", ["f2", "f3"], pooling=PoolingType.MEAN)])
        >>> kjt = KeyedJaggedTensor(["f1", "f2", "f3"], torch.tensor([1, 2, 3, 4, 5, 6]),
        ...                         lengths=torch.tensor([1, 1, 2, 0, 1, 1]))
        >>> out = ebc(kjt)
        >>> out.values().shape, out.keys()
        (torch.Size([2, 16]), ['f1', 'f2', 'f3'])
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], is_weighted: bool = False,
                 device: Optional[torch.device | str] = None, sparse: bool = False) -> None:
        super().__init__()
        if not tables:
            raise ValueError("an EmbeddingBagCollection needs at least one table")
        names = [t.name for t in tables]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise ValueError(f"tables need distinct non-empty names, got {names}")
        if is_weighted and any(t.pooling != PoolingType.SUM for t in tables):
            raise ValueError("weighted features need SUM pooling in every table")
        self._configs = list(tables)
        self._is_weighted = is_weighted
        self.embedding_bags = torch.nn.ModuleDict()
        on_cpu = device is None or torch.device(device).type == "cpu"
        for cfg in self._configs:
            bag = torch.nn.EmbeddingBag(cfg.num_embeddings, cfg.embedding_dim,
                                        mode=cfg.pooling.value.lower(), sparse=sparse,
                                        device="meta" if on_cpu else device, dtype=cfg.dtype)
            if on_cpu:  # CPU weights on huge pages (see recengine.nn.hugepages)
                bag.weight = torch.nn.Parameter(
                    hugepages.empty((cfg.num_embeddings, cfg.embedding_dim), cfg.dtype))
            bound = math.sqrt(1.0 / cfg.num_embeddings)
            lo = -bound if cfg.weight_init_min is None else cfg.weight_init_min
            hi = bound if cfg.weight_init_max is None else cfg.weight_init_max
            with torch.no_grad():
                bag.weight.uniform_(lo, hi)
            self.embedding_bags[cfg.name] = bag
        # Output blocks: (table index, feature name), table order then feature order.
        self._blocks = [(t, f) for t, cfg in enumerate(self._configs) for f in cfg.feature_names]
        self._feature_names = [f for _, f in self._blocks]
        self._block_tables = [t for t, _ in self._blocks]
        self._dims = [self._configs[t].embedding_dim for t, _ in self._blocks]
        self._modes = [cfg.pooling.value.lower() for cfg in self._configs]
        self._names = [cfg.name for cfg in self._configs]
        # The core's hold on the weights, rebuilt when one is replaced or its storage moves.
        self._held: Optional[_core.KeyedTables] = None
        self._slot_cache: tuple[tuple[str, ...], list[int]] = ((), [])

    @classmethod
    def from_torchrec(cls, module: Any) -> EmbeddingBagCollection:
        """Ours from a ``torchrec.EmbeddingBagCollection``, sharing its weight Parameters (read
        through its public surface: ``embedding_bag_configs()``, ``is_weighted()`` and the
        ``embedding_bags`` ModuleDict)."""
        configs = []
        for c in module.embedding_bag_configs():
            pooling = getattr(c.pooling, "value", c.pooling)
            if str(pooling).upper() not in ("SUM", "MEAN"):
                raise ValueError(f"table {c.name!r} pools {pooling}, which has no counterpart "
                                 "here (SUM or MEAN)")
            configs.append(EmbeddingBagConfig(c.num_embeddings, c.embedding_dim, c.name,
                                              list(c.feature_names), PoolingType(
                                                  str(pooling).upper()),
                                              dtype=module.embedding_bags[c.name].weight.dtype))
        ours = cls(configs, is_weighted=bool(module.is_weighted()), device="meta")
        for c in configs:
            ours.embedding_bags[c.name] = module.embedding_bags[c.name]
        ours.train(module.training)
        return ours

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return next(iter(self.embedding_bags.values())).weight.device

    def _weights(self) -> list[Tensor]:
        # Straight from the modules' dicts: Module.__getattr__ would cost more than a lookup.
        modules = self._modules["embedding_bags"]._modules  # type: ignore[union-attr]
        return [modules[name]._parameters["weight"] for name in self._names]  # type: ignore[index,union-attr,misc]

    def _slots(self, keys: list[str]) -> list[int]:
        """Where each output block's feature sits among ``keys`` (cached per key order)."""
        cached_keys, slots = self._slot_cache
        if tuple(keys) != cached_keys:
            try:
                slots = [keys.index(f) for f in self._feature_names]
            except ValueError:
                missing = sorted(set(self._feature_names) - set(keys))
                raise ValueError(f"the input lacks the features {missing}") from None
            self._slot_cache = (tuple(keys), slots)
        return slots

    def _held_tables(self, weights: list[Tensor]) -> Optional[_core.KeyedTables]:
        """The core's hold on ``weights`` (kept while they are the same tensors at the same
        addresses: in-place updates keep it), or None when one cannot run on the core (CUDA,
        float64, non-contiguous)."""
        held = self._held
        if held is not None and held.current(weights):
            return held
        self._held = None
        if not all(w.is_cpu and w.dtype in _CORE_DTYPES and w.dim() == 2 and w.is_contiguous()
                   for w in weights):
            return None
        self._held = _core.KeyedTables(weights, [w.detach() for w in weights],
                                       [_CORE_DTYPES[w.dtype] for w in weights], self._modes,
                                       [on_huge_pages(w) for w in weights])
        return self._held

    def _pool(self, kjt: KeyedJaggedTensor, slots: list[int],
              weights: list[Tensor]) -> Optional[Tensor]:
        """One core call for every block, or None when a weight cannot run on the core."""
        psw = kjt.weights_or_none() if self._is_weighted else None
        args = (weights, self._block_tables, slots, kjt.values().contiguous().numpy(),
                kjt.lengths().contiguous().numpy(), kjt.stride(),
                None if psw is None else _op._floats(psw))
        # The hold checks that the weights are still where it found them before reading.
        out = None if self._held is None else self._held.pool(*args)
        if out is None:
            held = self._held_tables(weights)
            if held is None:
                return None
            out = held.pool(*args)
            assert out is not None, "a hold made from these weights a moment ago"
        result = torch.from_numpy(out)
        dtype = weights[0].dtype
        return result if dtype == torch.float32 or any(w.dtype != dtype for w in weights) \
            else result.to(dtype)

    def _weight_grads(self, kjt: KeyedJaggedTensor, slots: list[int], grad: Tensor,
                      weights: list[Tensor], needed: Sequence[bool]) -> list[Optional[Tensor]]:
        """Every table's gradient from one core call: dense tables are summed into their
        buffers, sparse ones get torch's uncoalesced sparse gradient."""
        sparse = [self.embedding_bags[name].sparse for name in self._names]
        dense = [None if sparse[t] or not needed[t] else torch.zeros(w.shape, dtype=torch.float32)
                 for t, w in enumerate(weights)]
        psw = kjt.weights_or_none() if self._is_weighted else None
        parts = _core.pool_keyed_backward(
            _op._floats(grad), self._block_tables, slots, [w.shape[0] for w in weights],
            [w.shape[1] for w in weights], kjt.values().contiguous().numpy(),
            kjt.lengths().contiguous().numpy(), kjt.stride(), self._modes,
            [None if d is None else d.numpy() for d in dense],
            None if psw is None else _op._floats(psw),
            accumulate=[_CORE_DTYPES[w.dtype] for w in weights])
        out: list[Optional[Tensor]] = []
        for t, w in enumerate(weights):
            if not needed[t]:
                out.append(None)
            elif dense[t] is not None:
                d = dense[t]
                out.append(d if w.dtype == torch.float32 else d.to(w.dtype))
            else:
                mine = [p for p, table in zip(parts, self._block_tables) if table == t]
                rows = _cat([torch.from_numpy(r) for r, _ in mine])
                vals = _cat([torch.from_numpy(v) for _, v in mine]).to(w.dtype)
                out.append(torch.sparse_coo_tensor(rows[None], vals, tuple(w.shape),
                                                   check_invariants=False))
        return out

    def _pool_torch(self, kjt: KeyedJaggedTensor) -> Tensor:
        """Torch's kernel per feature (CUDA, other dtypes, tracing)."""
        jts = kjt.to_dict()
        outs = []
        for t, f in self._blocks:
            jt = jts[f]
            bag = self.embedding_bags[self._configs[t].name]
            psw = jt.weights_or_none() if self._is_weighted else None
            outs.append(torch.nn.functional.embedding_bag(
                jt.values(), bag.weight, jt.offsets(), mode=self._modes[t], sparse=bag.sparse,
                per_sample_weights=psw, include_last_offset=True))
        return torch.cat(outs, dim=1)

    def forward(self, features: Any) -> KeyedTensor:
        """Pool ``features`` (a KeyedJaggedTensor): returns a KeyedTensor ``[B, sum(D)]``."""
        kjt = as_kjt(features)
        if self._is_weighted and kjt.weights_or_none() is None:
            raise ValueError("this collection is weighted: the input needs weights")
        weights = self._weights()
        values: Optional[Tensor] = None
        if (not torch.compiler.is_compiling() and kjt.values().is_cpu
                and kjt.values().dtype in (torch.int32, torch.int64)):
            slots = self._slots(kjt.keys())
            if not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
                values = self._pool(kjt, slots, weights)
            elif self._held_tables(weights) is not None:
                values = _Keyed.apply(self, kjt, slots, *weights)
        if values is None:
            values = self._pool_torch(kjt)
        return KeyedTensor(self._feature_names, self._dims, values)
