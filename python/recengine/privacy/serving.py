"""The lookups a recommendation model makes for MovieLens users, served through recengine so
that the access hook sees them: the traces the attacks read.

:func:`static_tables` builds one embedding table per static user feature (rows: the
feature's vocabulary) as an :class:`~recengine.EmbeddingCollection`; :func:`serve_static`
serves each user's request (one bag of one row per feature) and returns what a host saw.
:func:`serve_ratings` serves every rating, in time order, as a request reading the rated
item's row of an item table (tagged ``(user id, timestamp)``); :func:`per_user` merges a
user's requests. :func:`serve_histories` serves the requests of a model with a history
feature (DIN's and DIEN's behaviour sequences): each rating's request reads the rows of the
user's ``k`` most recent items before it. :func:`serve_hashed` serves ratings through a
table whose rows are the item ids hashed as ``(x + mask) mod P``.

Example::

    >>> from recengine.privacy.movielens import load_movielens
    >>> ml = load_movielens()  # doctest: +SKIP
    >>> seen = serve_static(ml, static_tables(ml))  # doctest: +SKIP
    >>> from recengine.privacy import identify
    >>> identify(seen, ["age", "gender", "occupation"]).one_anonymous  # doctest: +SKIP
    326
"""

from __future__ import annotations

from typing import Any, Hashable, Optional, Sequence

import numpy as np

from ..collection import EmbeddingCollection
from ..table import EmbeddingTable
from .movielens import STATIC_FEATURES, MovieLens
from .trace import record

__all__ = ["per_user", "serve_hashed", "serve_histories", "serve_ratings", "serve_static",
           "static_tables"]


def _random_table(rows: int, dim: int, rng: np.random.Generator) -> EmbeddingTable:
    """A ``[rows, dim]`` table of N(0, 1) rows (the attacks read which rows, not their values)."""
    return EmbeddingTable(rng.standard_normal((rows, dim), dtype=np.float32))


def static_tables(data: MovieLens, dim: int = 16, features: Sequence[str] = STATIC_FEATURES,
                  seed: int = 0) -> tuple[EmbeddingCollection, tuple[str, ...]]:
    """A collection with one random ``[vocabulary, dim]`` table per static feature, and the
    features in its order."""
    rng = np.random.default_rng(seed)
    unknown = [f for f in features if f not in data.static]
    if unknown:
        raise ValueError(f"unknown static features {unknown}; expected some of "
                         f"{', '.join(data.static)}")
    tables = [_random_table(len(data.vocab[f]), dim, rng) for f in features]
    return EmbeddingCollection(tables), tuple(features)


def serve_static(data: MovieLens, model: tuple[EmbeddingCollection, tuple[str, ...]],
                 users: Optional[Sequence[int]] = None, oblivious: Any = None
                 ) -> dict[Optional[Hashable], dict[str, np.ndarray]]:
    """Serve one request per user (index into ``data.user_ids``; default all): a lookup of
    its static features in ``model`` (each table looked up ``oblivious``-ly where given: a
    name in :data:`recengine.table.OBLIVIOUS` or a :class:`~recengine.table.Pad`); the rows
    each request read, by feature, as a host saw them (for an ORAM, the leaves of its
    paths)."""
    collection, features = model
    order = range(data.num_users) if users is None else users
    one = np.ones(1, dtype=np.int64)
    with record() as rec:
        for f, t in zip(features, collection.tables):
            rec.name(t, f)
        for u in order:
            with rec.request(int(data.user_ids[u])):
                ids = [data.static[f][u:u + 1] for f in features]
                collection.lookup(ids, lengths=[one] * len(features), oblivious=oblivious)
    return rec.rows_by_request()


def serve_ratings(data: MovieLens, dim: int = 16, seed: int = 0, oblivious: Any = None
                  ) -> dict[Optional[Hashable], dict[str, np.ndarray]]:
    """Serve every rating of ``data`` in time order as one request (tagged ``(user id,
    timestamp)``) that reads its item's row of a random ``[num_items, dim]`` table named
    ``"items"`` (looked up ``oblivious``-ly where given); what a host saw, by request."""
    table = _random_table(max(data.num_items, 1), dim, np.random.default_rng(seed))
    order = np.argsort(data.ratings_time, kind="stable")
    one = np.ones(1, dtype=np.int64)
    with record() as rec:
        rec.name(table, "items")
        for k in order:
            tag = (int(data.user_ids[data.ratings_user[k]]), float(data.ratings_time[k]))
            with rec.request(tag):
                table.lookup(data.ratings_item[k:k + 1], lengths=one, oblivious=oblivious)
    return rec.rows_by_request()


def per_user(seen: dict[Optional[Hashable], dict[str, np.ndarray]]
             ) -> dict[Hashable, dict[str, np.ndarray]]:
    """``(user, timestamp)``-tagged requests merged per user, in time order (untagged ones
    dropped)."""
    merged: dict[Hashable, dict[str, list[tuple[float, np.ndarray]]]] = {}
    for tag, tables in seen.items():
        if not isinstance(tag, tuple) or len(tag) != 2:
            continue
        for t, rows in tables.items():
            merged.setdefault(tag[0], {}).setdefault(t, []).append((tag[1], rows))
    return {u: {t: np.concatenate([r for _, r in sorted(v, key=lambda p: p[0])])
                for t, v in tables.items()} for u, tables in merged.items()}


def serve_histories(data: MovieLens, k: int, dim: int = 16, seed: int = 0,
                    oblivious: Any = None) -> dict[Optional[Hashable], dict[str, np.ndarray]]:
    """Serve, for every rating in time order after a user's first, a request tagged ``(user
    id, timestamp)`` whose history feature reads the rows of the user's ``k`` most recent
    items before it (fewer at first), most recent first, from a table named ``"history"``:
    what a host saw, by request. Ratings of one user at the same second count as one
    request, made before any of them. ``oblivious`` as in :func:`serve_static`."""
    if k < 1:
        raise ValueError(f"a history needs k >= 1 items, got {k}")
    table = _random_table(max(data.num_items, 1), dim, np.random.default_rng(seed))
    order = np.lexsort((data.ratings_item, data.ratings_time, data.ratings_user))
    with record() as rec:
        rec.name(table, "history")
        start = 0
        while start < order.size:
            u = data.ratings_user[order[start]]
            end = start
            while end < order.size and data.ratings_user[order[end]] == u:
                end += 1
            items, times = data.ratings_item[order[start:end]], data.ratings_time[order[start:end]]
            for t in np.unique(times)[1:]:
                before = items[times < t][::-1][:k]
                with rec.request((int(data.user_ids[u]), float(t))):
                    table.lookup(before, lengths=np.array([before.size]),
                                 oblivious=oblivious)
            start = end
    return rec.rows_by_request()


def serve_hashed(data: MovieLens, mask: int, modulus: int, ratings: Optional[np.ndarray] = None,
                 dim: int = 8, seed: int = 0, oblivious: Any = None
                 ) -> dict[Optional[Hashable], dict[str, np.ndarray]]:
    """Serve ``ratings`` (indices into ``data``'s ratings, in the order given; default all in
    time order) as requests tagged by their index, each reading row ``(item + mask) mod
    modulus`` of a ``[modulus, dim]`` table named ``"hashed"`` (looked up ``oblivious``-ly
    where given)."""
    if modulus < max(data.num_items, 1) or not 0 <= mask < modulus:
        raise ValueError(f"need modulus >= the {data.num_items} items and 0 <= mask < modulus")
    table = _random_table(modulus, dim, np.random.default_rng(seed))
    order = np.argsort(data.ratings_time, kind="stable") if ratings is None else ratings
    rows = (data.ratings_item + mask) % modulus
    one = np.ones(1, dtype=np.int64)
    with record() as rec:
        rec.name(table, "hashed")
        for k in order:
            with rec.request(int(k)):
                table.lookup(rows[k:k + 1], lengths=one, oblivious=oblivious)
    return rec.rows_by_request()
