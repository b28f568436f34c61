"""The parts every DeepRecInfra model shares: its sparse features, a batch, the embedding front end.

A model's sparse input is one ``[B, L]`` int64 tensor per :class:`Feature`: ``L`` ids of one
table per sample, either pooled (summed to one ``[B, D]`` vector, the fixed pooling of the
DeepRecSys configs) or kept as a sequence (``[B, L, D]``, for DIN's attention and DIEN's GRUs).
Pooled features of all tables are pooled in one core call (:class:`EmbeddingBagCollection`).

``embeddings="torch"`` builds the same model on plain ``torch.nn.EmbeddingBag`` modules, one
per table, each feature its own call (torch's own way), with the same state_dict keys, so one
model's weights load into the other and :func:`recengine.nn.convert` turns it into the drop-in
route. :data:`EMBEDDINGS` names the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..nn import EmbeddingBag, EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from ..rows import draw_rows
from ..shapes import TableSpec

__all__ = ["EMBEDDINGS", "Batch", "Feature", "RecModel", "mlp"]

#: Where a model's embeddings live: ``"recengine"`` (one :class:`EmbeddingBagCollection` core
#: call for every pooled feature) or ``"torch"`` (a ``torch.nn.EmbeddingBag`` per table).
EMBEDDINGS: tuple[str, ...] = ("recengine", "torch")


@dataclass(frozen=True)
class Feature:
    """One sparse input: ``length`` ids per sample into table ``table``, pooled by sum or kept
    as a ``sequence``."""

    name: str
    table: int
    length: int
    sequence: bool = False


@dataclass
class Batch:
    """A model's input for ``B`` samples: ``dense`` ``[B, dense_dim]`` float32 (``dense_dim``
    may be 0) and ``sparse``, one ``[B, L_f]`` int64 tensor per feature of the model.

    Example::

        >>> b = Batch(torch.zeros(4, 2), [torch.zeros(4, 3, dtype=torch.int64)])
        >>> len(b), [len(p) for p in b.split(3)]
        (4, [3, 1])
    """

    dense: Tensor
    sparse: list[Tensor]

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def rows(self, start: int, stop: int) -> Batch:
        """Samples ``start:stop`` (views, no copy)."""
        return Batch(self.dense[start:stop], [s[start:stop] for s in self.sparse])

    def split(self, size: int) -> list[Batch]:
        """Sub-batches of at most ``size`` samples, in order (``ceil(B / size)`` of them)."""
        if size < 1:
            raise ValueError(f"a sub-batch needs at least one sample, got {size}")
        return [self.rows(i, i + size) for i in range(0, len(self), size)]


def mlp(sizes: Sequence[int], last_activation: bool = True) -> torch.nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ...`` with ReLU between (and after the last
    when ``last_activation``)."""
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class RecModel(torch.nn.Module):
    """Base of the DeepRecInfra models: the tables, the features that read them and a dense input.

    Subclasses set :attr:`name`, build their layers and implement :meth:`dense_part`, which
    takes :meth:`embed`'s pooled ``[B, D]`` vectors and sequences ``[B, L, D]`` by feature name
    and the dense input; ``forward(batch)`` runs the two in turn.

    Args:
        tables: the embedding tables (rows, dim, lookups per sample).
        features: the sparse inputs, each reading one table.
        dense_dim: width of the dense input (0: none).
        embeddings: one of :data:`EMBEDDINGS`.
        sparse: give the embedding weights sparse gradients (as DLRM trains).
    """

    name = "model"

    def __init__(self, tables: Sequence[TableSpec], features: Sequence[Feature],
                 dense_dim: int, embeddings: str = "recengine", sparse: bool = False) -> None:
        super().__init__()
        if embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, "
                             f"got {embeddings!r}")
        self.tables = list(tables)
        self.features = tuple(features)
        self.dense_dim = dense_dim
        self.embedding_route = embeddings
        pooled = [f for f in self.features if not f.sequence]
        by_table: dict[int, list[str]] = {}
        for f in pooled:
            by_table.setdefault(f.table, []).append(f.name)
        self._pooled = pooled
        self._lengths_by: dict[tuple[int, torch.device], Tensor] = {}
        self.embeddings: Optional[torch.nn.Module] = None
        if by_table and embeddings == "torch":
            self.embeddings = _TorchBags({f"t{t}": self.tables[t] for t in sorted(by_table)},
                                         sparse)
        elif by_table:
            self.embeddings = EmbeddingBagCollection([
                EmbeddingBagConfig(self.tables[t].num_rows, self.tables[t].dim, f"t{t}",
                                   feature_names=names)
                for t, names in sorted(by_table.items())], sparse=sparse)
        # Tables only read as sequences: one module each (a bag of one id per position).
        bag = torch.nn.EmbeddingBag if embeddings == "torch" else EmbeddingBag
        self.sequence_tables = torch.nn.ModuleDict({
            f"t{t}": bag(self.tables[t].num_rows, self.tables[t].dim, mode="sum", sparse=sparse)
            for t in sorted({f.table for f in self.features if f.sequence} - set(by_table))})

    def _bag(self, table: int) -> torch.nn.Module:
        key = f"t{table}"
        if key in self.sequence_tables:
            return self.sequence_tables[key]
        assert self.embeddings is not None
        return self.embeddings.embedding_bags[key]

    def _weight(self, table: int) -> Tensor:
        return self._bag(table).weight

    def embed(self, batch: Batch) -> dict[str, Tensor]:
        """Every feature's embedding by name: ``[B, D]`` pooled, ``[B, L, D]`` sequences."""
        if len(batch.sparse) != len(self.features):
            raise ValueError(f"{self.name} takes {len(self.features)} sparse features, "
                             f"got {len(batch.sparse)}")
        n = len(batch)
        out: dict[str, Tensor] = {}
        by_name = dict(zip((f.name for f in self.features), batch.sparse))
        for f, ids in zip(self.features, batch.sparse):
            if tuple(ids.shape) != (n, f.length):
                raise ValueError(f"feature {f.name} needs ids of shape ({n}, {f.length}), "
                                 f"got {tuple(ids.shape)}")
        if isinstance(self.embeddings, _TorchBags):
            for f in self._pooled:
                out[f.name] = self._bag(f.table)(by_name[f.name])
        elif self.embeddings is not None and self._pooled:
            values = torch.cat([by_name[f.name].reshape(-1) for f in self._pooled])
            lengths = self._lengths(n, values.device)
            kt = self.embeddings(KeyedJaggedTensor([f.name for f in self._pooled], values,
                                                   lengths=lengths))
            out.update(kt.to_dict())
        for f in self.features:
            if f.sequence:
                ids = by_name[f.name].reshape(-1, 1)
                if isinstance(self.embeddings, _TorchBags) or f"t{f.table}" in self.sequence_tables:
                    rows = self._bag(f.table)(ids)  # a module call, so convert() reaches it
                else:
                    rows = _gather(ids, self._weight(f.table))
                out[f.name] = rows.reshape(n, f.length, -1)
        return out

    def forward(self, batch: Batch) -> Tensor:
        """Scores ``[B, T]`` of a batch: :meth:`dense_part` of :meth:`embed`."""
        return self.dense_part(self.embed(batch), batch.dense)

    def dense_part(self, embedded: dict[str, Tensor], dense: Tensor) -> Tensor:
        """The model past its embedding lookups: scores ``[B, T]`` from :meth:`embed`'s
        vectors and the dense input ``[B, dense_dim]``. A server may run it apart from the
        lookups (the lookups on the CPU, this on a GPU).

        Example::

            >>> import recengine.models as rm
            >>> m = rm.build("ncf", scale=0.01)
            >>> b = m.example_input(3)
            >>> bool(torch.equal(m.dense_part(m.embed(b), b.dense), m(b)))
            True
        """
        raise NotImplementedError(f"{type(self).__name__} does not define its dense part")

    def _lengths(self, n: int, device: torch.device) -> Tensor:
        """The keyed lengths ``[K * n]`` of a batch of ``n`` (every pooled feature has a fixed
        length), made once per batch size and device (the collection only reads them)."""
        cache = self._lengths_by
        got = cache.get((n, device))
        if got is None:
            per_key = torch.tensor([f.length for f in self._pooled], dtype=torch.int64)
            got = cache[(n, device)] = per_key.repeat_interleave(n).to(device)
            if len(cache) > 64:  # many batch sizes: keep the newest few
                del cache[next(iter(cache))]
        return got

    def sample_batch(self, size: int, distribution: str = "uniform", alpha: float = 1.0,
                     seed: Optional[int] = None) -> Batch:
        """A random input of ``size`` samples: dense ``N(0, 1)``, ids from ``distribution``
        (:data:`recengine.rows.DISTRIBUTIONS`, or ``"movielens"``: MovieLens-100k's item
        popularity, :func:`recengine.workload.interaction_rows`), reproducible from
        ``seed``."""
        if size < 1:
            raise ValueError(f"a batch needs at least one sample, got {size}")
        rng = np.random.default_rng(seed)
        dense = torch.from_numpy(rng.standard_normal((size, self.dense_dim), dtype=np.float32))
        if distribution == "movielens":
            from ..workload import interaction_counts, interaction_rows

            counts = interaction_counts()

            def draw(n: int, k: int) -> np.ndarray:
                return interaction_rows(rng, n, k, counts)
        else:

            def draw(n: int, k: int) -> np.ndarray:
                return draw_rows(rng, n, k, distribution, alpha)

        sparse = [torch.from_numpy(draw(self.tables[f.table].num_rows, size * f.length)
                                   .reshape(size, f.length)) for f in self.features]
        return Batch(dense, sparse)

    def example_input(self, size: int = 4) -> Batch:
        """A small uniform random batch (for tracing and smoke tests)."""
        return self.sample_batch(size, seed=0)


class _TorchBags(torch.nn.Module):
    """The pooled tables as plain ``torch.nn.EmbeddingBag`` modules (``embedding_bags.<t>``,
    the keys :class:`EmbeddingBagCollection` uses), for ``embeddings="torch"``."""

    def __init__(self, tables: dict[str, TableSpec], sparse: bool) -> None:
        super().__init__()
        self.embedding_bags = torch.nn.ModuleDict({
            key: torch.nn.EmbeddingBag(t.num_rows, t.dim, mode="sum", sparse=sparse)
            for key, t in tables.items()})


def _gather(ids: Tensor, weight: Tensor) -> Tensor:
    """Rows ``ids`` ``[N, 1]`` of ``weight`` as ``[N, D]``, through the core (bounds checked)."""
    from ..nn.functional import embedding_bag

    return embedding_bag(ids, weight, mode="sum")
