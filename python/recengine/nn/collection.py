"""``EmbeddingBagCollection``: many tables, keyed jagged input, one core call.

Mirrors TorchRec's ``EmbeddingBagCollection`` (``EmbeddingBagConfig``, a
``KeyedJaggedTensor`` in and a float32 ``KeyedTensor`` out, TorchRec's output keys, state_dict
keys ``embedding_bags.<table>.weight``) for users coming from it, but pools every feature of
every table in one multithreaded call of the core (``_core.KeyedTables``) straight from the
batch's flat ids, with no per-table Python work.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .. import _access, _core
from .._access import RECORDERS as _RECORDING
from . import _op, hugepages
from ._oblivious import ObliviousReads
from .configs import EmbeddingBagConfig, PoolingType
from .functional import embedding_bag
from .hugepages import on_huge_pages
from .jagged import KeyedJaggedTensor, KeyedTensor, as_kjt

__all__ = ["EmbeddingBagCollection", "EmbeddingBagConfig", "PoolingType", "embedding_names"]

#: Weight dtypes the core pools, with its names for them.
_CORE_DTYPES = _op.CORE_DTYPES


def embedding_names(tables: Sequence[EmbeddingBagConfig]) -> list[str]:
    """The output keys of a collection of ``tables``, TorchRec's rule: each table's features
    in order, a feature that more than one table looks up named ``feature@table``."""
    counts: dict[str, int] = {}
    for cfg in tables:
        for f in cfg.feature_names:
            counts[f] = counts.get(f, 0) + 1
    return [f if counts[f] == 1 else f"{f}@{cfg.name}" for cfg in tables
            for f in cfg.feature_names]


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


class EmbeddingBagCollection(ObliviousReads, torch.nn.Module):
    """Many embedding tables looked up by keyed jagged features, pooled in one core call
    (TorchRec's ``EmbeddingBagCollection``).

    Args:
        tables: the tables' :class:`EmbeddingBagConfig` (a table with no feature names gets
            one named as the table, as in TorchRec).
        is_weighted: pool with the input's per-id weights (SUM tables; in a MEAN table torch
            refuses them at forward time, as in TorchRec).
        device: where the weights live (default: torch's default device, the CPU unless a
            ``torch.device`` context says otherwise): CPU weights on huge pages
            (:mod:`recengine.nn.hugepages`); other devices run torch's kernel per feature,
            and the meta device gives shapes only.
        sparse: make the weights' gradients sparse (uncoalesced, as torch's); recengine's
            addition, keyword only in effect.
        oblivious: read every table so that the memory accesses do not give the ids away
            (``"scan"``, ``"oram"``, ``"pad"`` or a :class:`recengine.table.Pad`; see
            :meth:`recengine.EmbeddingTable.lookup`), feature by feature, for inference (a
            forward that needs a gradient is refused); each weight copied into a core table
            once per version of it. recengine's addition.

    ``forward(features)`` takes a :class:`KeyedJaggedTensor` (ours, or TorchRec's) whose keys
    include every table's feature names, and returns a float32 :class:`KeyedTensor` with one
    ``[B, D]`` block per feature, in table order then feature order (``[B, sum(D)]`` in all),
    keyed as :func:`embedding_names` says. A variable-batch input (``stride_per_key_per_rank``)
    gives each feature's bags, expanded to the batch through its ``inverse_indices``.

    Example::

        >>> ebc = EmbeddingBagCollection([
        ...     EmbeddingBagConfig(100, 8, "t1", feature_names=["f1"]),
        ...     EmbeddingBagConfig(50, 4, "t2", feature_names=["f2", "f3"],
        ...                        pooling=PoolingType.MEAN)])
        >>> kjt = KeyedJaggedTensor(["f1", "f2", "f3"], torch.tensor([1, 2, 3, 4, 5, 6]),
        ...                         lengths=torch.tensor([1, 1, 2, 0, 1, 1]))
        >>> out = ebc(kjt)
        >>> out.values().shape, out.keys()
        (torch.Size([2, 16]), ['f1', 'f2', 'f3'])
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], is_weighted: bool = False,
                 device: Optional[torch.device | str] = None, sparse: bool = False,
                 oblivious: Any = None) -> None:
        super().__init__()
        self.oblivious = oblivious
        names = [t.name for t in tables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Duplicate table name {duplicates[0]}")
        for cfg in tables:
            if cfg.pooling not in (PoolingType.SUM, PoolingType.MEAN):
                raise ValueError(f"Unsupported pooling type {cfg.pooling}")
            if not cfg.feature_names:
                cfg.feature_names = [cfg.name]  # TorchRec's rule
        self._configs = list(tables)
        self._is_weighted = is_weighted
        self.embedding_bags = torch.nn.ModuleDict()
        where = torch.empty(0).device if device is None else torch.device(device)
        self._device = where
        on_cpu = where.type == "cpu"
        for cfg in self._configs:
            bag = torch.nn.EmbeddingBag(cfg.num_embeddings, cfg.embedding_dim,
                                        mode=cfg.pooling.value.lower(), sparse=sparse,
                                        include_last_offset=True,
                                        device="meta" if on_cpu else where,
                                        dtype=cfg.torch_dtype)
            if on_cpu:  # CPU weights on huge pages (see recengine.nn.hugepages)
                bag.weight = torch.nn.Parameter(
                    hugepages.empty((cfg.num_embeddings, cfg.embedding_dim), cfg.torch_dtype))
            self.embedding_bags[cfg.name] = bag
        self.reset_parameters()
        self._embedding_names = embedding_names(self._configs)
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

    def reset_parameters(self) -> None:
        """Initialise every weight by its config's ``init_fn`` (not on the meta device)."""
        if self._device.type == "meta":
            return
        for cfg in self._configs:
            assert cfg.init_fn is not None
            with torch.no_grad():
                cfg.init_fn(self.embedding_bags[cfg.name].weight)

    @classmethod
    def from_torchrec(cls, module: Any) -> EmbeddingBagCollection:
        """Ours from a ``torchrec.EmbeddingBagCollection``, sharing its weight Parameters (read
        through its public surface: ``embedding_bag_configs()``, ``is_weighted()`` and the
        ``embedding_bags`` ModuleDict)."""
        configs = []
        for c in module.embedding_bag_configs():
            pooling = str(getattr(c.pooling, "value", c.pooling)).upper()
            if pooling not in ("SUM", "MEAN"):
                raise ValueError(f"table {c.name!r} pools {pooling}, which has no counterpart "
                                 "here (SUM or MEAN)")
            configs.append(EmbeddingBagConfig(
                c.num_embeddings, c.embedding_dim, c.name, feature_names=list(c.feature_names),
                pooling=PoolingType(pooling),
                dtype=module.embedding_bags[c.name].weight.dtype))
        ours = cls(configs, is_weighted=bool(module.is_weighted()), device="meta")
        for c in configs:
            ours.embedding_bags[c.name] = module.embedding_bags[c.name]
        ours._device = module.embedding_bags[configs[0].name].weight.device if configs \
            else torch.device("cpu")
        ours.train(module.training)
        return ours

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        """The device the collection was built for (TorchRec's ``device``)."""
        return self._device

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
            twice = sorted({f for f in self._feature_names if keys.count(f) > 1})
            if twice:
                raise ValueError(f"the input names the features {twice} more than once")
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
        if _RECORDING:  # the hook: one test while nobody records
            _access.note_keyed(weights, self._block_tables, slots, args[3], args[4], args[5],
                               self._names)
        # float32 for every table, as TorchRec's, which pools in the table's dtype first.
        return self._round_to_tables(torch.from_numpy(out), weights, in_place=True)

    def _weight_grads(self, kjt: KeyedJaggedTensor, slots: list[int], grad: Tensor,
                      weights: list[Tensor], needed: Sequence[bool]) -> list[Optional[Tensor]]:
        """Every table's gradient from one core call: dense tables are summed into their
        buffers, sparse ones get torch's uncoalesced sparse gradient."""
        grad = self._round_to_tables(grad, weights)
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

    def _round_to_tables(self, x: Tensor, weights: list[Tensor], in_place: bool = False
                         ) -> Tensor:
        """``x`` ``[B, sum(D)]`` float32 with each float16/bfloat16 table's columns rounded to
        its dtype: TorchRec pools in the table's dtype and converts to float32, so its output
        and the gradient reaching the table are rounded so."""
        if all(w.dtype == torch.float32 for w in weights):
            return x
        x = x if in_place else x.clone()
        col = 0
        for t, dim in zip(self._block_tables, self._dims):
            dtype = weights[t].dtype
            if dtype != torch.float32:
                x[:, col:col + dim] = x[:, col:col + dim].to(dtype).float()
            col += dim
        return x

    def _pool_oblivious(self, kjt: KeyedJaggedTensor) -> Tensor:
        """Each feature pooled from its table read obliviously (see ``oblivious``)."""
        self._slots(kjt.keys())  # refuses missing features and features named twice
        jts = kjt.to_dict()
        weights = self._weights()
        outs = [self._oblivious_tables.pool(
                    weights[t], jts[f].values(), jts[f].offsets(),
                    jts[f].weights() if self._is_weighted else None, self._modes[t], True,
                    self._oblivious).float()
                for t, f in self._blocks]
        return _join_features(outs, kjt.inverse_indices_or_none(), self._feature_names)

    def _pool_features(self, kjt: KeyedJaggedTensor) -> Tensor:
        """One :func:`recengine.nn.functional.embedding_bag` call per feature (on the core
        where it runs, else torch's kernel): variable batches, other devices, tracing (``kjt``
        a torch.fx Proxy), and inputs torch refuses (so its exception is raised)."""
        jts = kjt.to_dict()
        outs = []
        for t, f in self._blocks:
            jt = jts[f]
            bag = self.embedding_bags[self._names[t]]
            outs.append(_pool_feature(jt.values(), bag.weight, jt.offsets(), self._modes[t],
                                      bag.sparse,
                                      jt.weights() if self._is_weighted else None))
        return _join_features(outs, kjt.inverse_indices_or_none(), self._feature_names)

    def _core_takes(self, kjt: KeyedJaggedTensor, weights: list[Tensor]) -> bool:
        """Whether one keyed core call can pool ``kjt`` with torch's semantics."""
        values = kjt.values()
        if torch.compiler.is_compiling() or not values.is_cpu or kjt.variable_stride_per_key() \
                or values.dtype not in (torch.int32, torch.int64) or not self._blocks:
            return False
        if self._is_weighted:
            # Weights torch refuses (another dtype than a table's, or a MEAN table) go to
            # torch per feature, which raises its own exception for them.
            psw = kjt.weights()
            return all(w.dtype == psw.dtype for w in weights) and \
                all(m == "sum" for m in self._modes)
        return True

    def forward(self, features: Any) -> KeyedTensor:
        """Pool ``features`` (a KeyedJaggedTensor): returns a KeyedTensor ``[B, sum(D)]``."""
        if isinstance(features, torch.fx.Proxy):
            # Traced by torch.fx: one graph node per feature's pooling (the functional
            # embedding_bag, which runs on the core) and one to join them.
            return KeyedTensor(self._embedding_names, self._dims, self._pool_features(features))
        kjt = as_kjt(features)
        if self._oblivious is not None:
            return KeyedTensor(self._embedding_names, self._dims, self._pool_oblivious(kjt))
        weights = self._weights()
        values: Optional[Tensor] = None
        slots = self._slots(kjt.keys())  # (refuses missing features and features named twice)
        if self._core_takes(kjt, weights):
            try:
                if not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
                    values = self._pool(kjt, slots, weights)
                elif self._held_tables(weights) is not None:
                    values = _Keyed.apply(self, kjt, slots, *weights)
            except (IndexError, ValueError) as refusal:
                # The core refused the input: torch's kernel per feature raises torch's
                # exception for it, as TorchRec's collection would, caused by the core's
                # (which says which id of which bag and table).
                try:
                    values = self._pool_features(kjt)
                except Exception as theirs:
                    raise theirs from refusal
        if values is None:
            values = self._pool_features(kjt)
        return KeyedTensor(self._embedding_names, self._dims, values)


def _pool_feature(values: Tensor, weight: Tensor, offsets: Tensor, mode: str, sparse: bool,
                  per_sample_weights: Optional[Tensor]) -> Tensor:
    """One feature's bags (``offsets`` with the last offset) as float32, as TorchRec's."""
    return embedding_bag(values, weight, offsets, mode=mode, sparse=sparse,
                         per_sample_weights=per_sample_weights, include_last_offset=True).float()


def _join_features(outs: list[Tensor], inverse: Optional[tuple[list[str], Tensor]],
                   feature_names: list[str]) -> Tensor:
    """The features' blocks side by side, each first expanded to the batch through its
    ``inverse`` indices (variable batch) when the input has them."""
    if inverse is not None and inverse[1].numel() > 0:
        row = {name: i for i, name in enumerate(inverse[0])}
        outs = [out.index_select(0, inverse[1][row[f]]) for out, f in zip(outs, feature_names)]
    return torch.cat(outs, dim=1)


# Nodes of a torch.fx graph (their arguments are proxies while it is traced).
torch.fx.wrap("_pool_feature")
torch.fx.wrap("_join_features")
