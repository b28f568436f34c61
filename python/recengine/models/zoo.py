"""The eight DeepRecInfra models in torch, on recengine embeddings.

Layer sizes follow the public DeepRecSys configs. Where the table leaves room,
the choice made here is written on the class. Every model takes a :class:`~.base.Batch` and
returns per-sample scores: ``[B, 1]`` click probabilities (DLRM, WnD, NCF), ``[B, tasks]``
(MT-WnD) or ``[B, 2]`` class probabilities (DIN, DIEN).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..shapes import TableSpec
from .base import Feature, RecModel, mlp

__all__ = ["AUGRU", "DIEN", "DIN", "DLRM", "NCF", "MultiTaskWideAndDeep", "WideAndDeep"]


def _pooled(tables: Sequence[TableSpec]) -> list[Feature]:
    return [Feature(f"f{i}", i, t.lookups) for i, t in enumerate(tables)]


class DLRM(RecModel):
    """DLRM (RMC1, RMC2, RMC3): a bottom MLP over the dense input, every table pooled, the
    pooled vectors concatenated with the bottom output ("concat" interaction) into the top
    MLP, and a sigmoid.

    Args:
        tables: the embedding tables.
        bottom: bottom MLP sizes, input first (``bottom[0]`` is the dense width).
        top: top MLP sizes after its input (the input is ``bottom[-1] + sum(dims)``).

    Example::

        >>> from recengine.shapes import model_tables
        >>> m = DLRM(model_tables("rmc1", 1e-3), [128, 64, 32], [256, 64, 1])
        >>> m(m.example_input(4)).shape
        torch.Size([4, 1])
    """

    def __init__(self, tables: Sequence[TableSpec], bottom: Sequence[int],
                 top: Sequence[int], name: str = "dlrm", embeddings: str = "recengine",
                 sparse: bool = False) -> None:
        super().__init__(tables, _pooled(tables), bottom[0], embeddings=embeddings, sparse=sparse)
        self.name = name
        self.bottom = mlp(bottom)
        self.top = mlp([bottom[-1] + sum(t.dim for t in tables), *top], last_activation=False)

    def dense_part(self, emb: dict[str, Tensor], dense: Tensor) -> Tensor:
        x = torch.cat([self.bottom(dense), *(emb[f.name] for f in self.features)], dim=1)
        return torch.sigmoid(self.top(x))


class WideAndDeep(RecModel):
    """Wide & Deep: a linear (wide) and a deep MLP over the dense input and every pooled
    table, their logits summed, then a sigmoid.

    Example::

        >>> from recengine.shapes import model_tables
        >>> m = WideAndDeep(model_tables("wnd", 1e-3))
        >>> m(m.example_input(2)).shape
        torch.Size([2, 1])
    """

    name = "wnd"

    def __init__(self, tables: Sequence[TableSpec], dense_dim: int = 512,
                 deep: Sequence[int] = (1024, 512, 256, 1), embeddings: str = "recengine",
                 sparse: bool = False) -> None:
        super().__init__(tables, _pooled(tables), dense_dim, embeddings=embeddings, sparse=sparse)
        width = dense_dim + sum(t.dim for t in tables)
        self.wide = torch.nn.Linear(width, deep[-1])
        self.deep = mlp([width, *deep], last_activation=False)

    def dense_part(self, emb: dict[str, Tensor], dense: Tensor) -> Tensor:
        x = torch.cat([dense, *(emb[f.name] for f in self.features)], dim=1)
        return torch.sigmoid(self.wide(x) + self.deep(x))


class MultiTaskWideAndDeep(RecModel):
    """Multi-task Wide & Deep: a shared MLP (1888 -> 1024-512) over the dense input and every
    pooled table, then per task an MLP (512 -> 256-128) and a logit, plus a per-task wide
    linear term; one sigmoid per task. ``tasks`` defaults to 3.

    Example::

        >>> from recengine.shapes import model_tables
        >>> m = MultiTaskWideAndDeep(model_tables("mtwnd", 1e-3), tasks=2)
        >>> m(m.example_input(2)).shape
        torch.Size([2, 2])
    """

    name = "mtwnd"

    def __init__(self, tables: Sequence[TableSpec], dense_dim: int = 512, tasks: int = 3,
                 shared: Sequence[int] = (1024, 512), task: Sequence[int] = (256, 128),
                 embeddings: str = "recengine", sparse: bool = False) -> None:
        if tasks < 1:
            raise ValueError(f"MT-WnD needs at least one task, got {tasks}")
        super().__init__(tables, _pooled(tables), dense_dim, embeddings=embeddings, sparse=sparse)
        width = dense_dim + sum(t.dim for t in tables)
        self.wide = torch.nn.Linear(width, tasks)
        self.shared = mlp([width, *shared])
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(mlp([shared[-1], *task]), torch.nn.Linear(task[-1], 1))
            for _ in range(tasks))

    def dense_part(self, emb: dict[str, Tensor], dense: Tensor) -> Tensor:
        x = torch.cat([dense, *(emb[f.name] for f in self.features)], dim=1)
        h = self.shared(x)
        return torch.sigmoid(self.wide(x) + torch.cat([head(h) for head in self.heads], dim=1))


class NCF(RecModel):
    """Neural collaborative filtering (NeuMF): a matrix-factorisation branch (user x item
    product of the two MF tables) and an MLP branch (the two MLP tables concatenated,
    128 -> 256-256-128-64), joined (128 -> 64) and scored by a sigmoid. Tables: MF user, MF
    item, MLP user, MLP item; one lookup each.

    Example::

        >>> from recengine.shapes import model_tables
        >>> m = NCF(model_tables("ncf", 0.01))
        >>> m(m.example_input(3)).shape
        torch.Size([3, 1])
    """

    name = "ncf"

    def __init__(self, tables: Sequence[TableSpec], hidden: Sequence[int] = (256, 256, 128, 64),
                 final: int = 64, embeddings: str = "recengine", sparse: bool = False) -> None:
        if len(tables) != 4:
            raise ValueError(f"NCF takes 4 tables (MF user, MF item, MLP user, MLP item), "
                             f"got {len(tables)}")
        names = ("mf_user", "mf_item", "mlp_user", "mlp_item")
        super().__init__(tables, [Feature(n, i, 1) for i, n in enumerate(names)], 0,
                         embeddings=embeddings, sparse=sparse)
        self.mlp = mlp([tables[2].dim + tables[3].dim, *hidden])
        self.final = torch.nn.Sequential(mlp([tables[0].dim + hidden[-1], final]),
                                         torch.nn.Linear(final, 1))

    def dense_part(self, e: dict[str, Tensor], dense: Tensor) -> Tensor:
        mf = e["mf_user"] * e["mf_item"]
        deep = self.mlp(torch.cat([e["mlp_user"], e["mlp_item"]], dim=1))
        return torch.sigmoid(self.final(torch.cat([mf, deep], dim=1)))


class _Attention(torch.nn.Module):
    """Scores of a query ``[B, D]`` against keys ``[B, L, D]``: an MLP over
    ``(key, query, key * query)`` (``3D`` wide) per position, ``[B, L]`` out."""

    def __init__(self, dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp([3 * dim, *hidden, 1], last_activation=False)

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        q = query.unsqueeze(1).expand_as(keys)
        return self.net(torch.cat([keys, q, keys * q], dim=-1)).squeeze(-1)


class DIN(RecModel):
    """Deep Interest Network: the user's behaviour sequence (``history`` ids of the behaviour
    table, 3 by default as in the config's pooling factor) is weighted by a local activation
    unit against the candidate ad (an MLP 96 -> 32 -> 1 over behaviour, ad and their product,
    unnormalised weights as in DIN) and summed; user profile, weighted interest, ad and
    context (128 wide) go through the top MLP 200-80-2 and a softmax. Tables: user profile,
    behaviour, ad, context.

    Example::

        >>> from recengine.shapes import model_tables
        >>> m = DIN(model_tables("din", 1e-3))
        >>> m(m.example_input(2)).shape
        torch.Size([2, 2])
    """

    name = "din"

    def __init__(self, tables: Sequence[TableSpec], history: int = 3,
                 attention: Sequence[int] = (32,), top: Sequence[int] = (200, 80, 2),
                 embeddings: str = "recengine", sparse: bool = False) -> None:
        if len(tables) != 4:
            raise ValueError(f"DIN takes 4 tables (user, behaviour, ad, context), "
                             f"got {len(tables)}")
        if history < 1:
            raise ValueError(f"the behaviour history needs at least one item, got {history}")
        features = [Feature("user", 0, tables[0].lookups),
                    Feature("behaviour", 1, history, sequence=True),
                    Feature("ad", 2, tables[2].lookups), Feature("context", 3, tables[3].lookups)]
        super().__init__(tables, features, 0, embeddings=embeddings, sparse=sparse)
        dim = tables[1].dim
        self.attention = _Attention(dim, attention)
        self.top = mlp([sum(t.dim for t in tables), *top], last_activation=False)

    def dense_part(self, e: dict[str, Tensor], dense: Tensor) -> Tensor:
        weights = self.attention(e["ad"], e["behaviour"])
        interest = (weights.unsqueeze(-1) * e["behaviour"]).sum(dim=1)
        x = torch.cat([e["user"], interest, e["ad"], e["context"]], dim=1)
        return torch.softmax(self.top(x), dim=1)


class AUGRU(torch.nn.Module):
    """A GRU with attentional update gate (DIEN): the update gate of step ``t`` is scaled by
    the attention score ``a_t``, ``h_t = (1 - a_t u_t) h_{t-1} + a_t u_t h~_t``. With every
    score 1 it is the plain GRU (``torch.nn.GRUCell``, whose parameters it holds).

    ``forward(x [B, L, D], scores [B, L])`` returns the last state ``[B, H]``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = torch.nn.GRUCell(input_size, hidden_size)

    def forward(self, x: Tensor, scores: Tensor) -> Tensor:
        c = self.cell
        gi = torch.nn.functional.linear(x, c.weight_ih, c.bias_ih)  # [B, L, 3H], all steps
        h = x.new_zeros(x.shape[0], c.hidden_size)
        for t in range(x.shape[1]):
            gh = torch.nn.functional.linear(h, c.weight_hh, c.bias_hh)
            i_r, i_z, i_n = gi[:, t].chunk(3, dim=1)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            reset = torch.sigmoid(i_r + h_r)
            update = (1 - torch.sigmoid(i_z + h_z)) * scores[:, t:t + 1]
            candidate = torch.tanh(i_n + reset * h_n)
            h = (1 - update) * h + update * candidate
        return h


class DIEN(RecModel):
    """Deep Interest Evolution Network: the 41 small tables are user and context features
    (pooled and summed into one user vector); the two large ones are item ids and item
    categories, read for the candidate and for a ``history`` of 40 behaviours (an item is its
    id's plus its category's vector). A GRU extracts interests from the history, an attention
    MLP (80-40) scores them against the candidate (softmax over the history), and an
    :class:`AUGRU` evolves them; user, candidate, history sum, candidate x history sum and the
    final interest (160 wide) go through the top MLP 200-80-2 and a softmax.

    Example::

        >>> from recengine.shapes import model_tables
        >>> m = DIEN(model_tables("dien", 1e-3), history=5)
        >>> m(m.example_input(2)).shape
        torch.Size([2, 2])
    """

    name = "dien"

    def __init__(self, tables: Sequence[TableSpec], history: int = 40,
                 attention: Sequence[int] = (80, 40), top: Sequence[int] = (200, 80, 2),
                 embeddings: str = "recengine", sparse: bool = False) -> None:
        if len(tables) < 3:
            raise ValueError(f"DIEN takes user tables then item and category tables, "
                             f"got {len(tables)} tables")
        if history < 1:
            raise ValueError(f"the behaviour history needs at least one item, got {history}")
        item, cat = len(tables) - 2, len(tables) - 1
        dims = {t.dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"DIEN sums embeddings: every table needs one dim, got {dims}")
        features = [Feature(f"user{i}", i, tables[i].lookups) for i in range(item)]
        features += [Feature("item", item, 1), Feature("category", cat, 1),
                     Feature("item_history", item, history, sequence=True),
                     Feature("category_history", cat, history, sequence=True)]
        super().__init__(tables, features, 0, embeddings=embeddings, sparse=sparse)
        self._users = [f"user{i}" for i in range(item)]
        dim = tables[0].dim
        self.gru = torch.nn.GRU(dim, dim, batch_first=True)
        self.attention = _Attention(dim, attention)
        self.augru = AUGRU(dim, dim)
        self.top = mlp([5 * dim, *top], last_activation=False)

    def dense_part(self, e: dict[str, Tensor], dense: Tensor) -> Tensor:
        user = torch.stack([e[u] for u in self._users]).sum(dim=0)
        item = e["item"] + e["category"]
        hist = e["item_history"] + e["category_history"]
        interests, _ = self.gru(hist)
        scores = torch.softmax(self.attention(item, interests), dim=1)
        final = self.augru(interests, scores)
        hist_sum = hist.sum(dim=1)
        x = torch.cat([user, item, hist_sum, item * hist_sum, final], dim=1)
        return torch.softmax(self.top(x), dim=1)
