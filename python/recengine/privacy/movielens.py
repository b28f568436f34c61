"""MovieLens-100k as the privacy attacks use it: 943 users with age, gender, occupation and
zip code, and 100,000 timestamped ratings of 1,682 movies (the files ship in the ``recbole``
wheel: ``pip install --no-deps recbole``).

Each static feature is a vocabulary: the row of a user's value in that feature's embedding
table is its index in :attr:`MovieLens.vocab` (sorted values; ages are kept as given, one row
per age). Items are rows ``item_id - 1`` of the item table.

Example::

    >>> ml = load_movielens()  # doctest: +SKIP
    >>> ml.num_users, ml.num_items, len(ml.ratings_user)  # doctest: +SKIP
    (943, 1682, 100000)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import numpy as np

__all__ = ["AGE_GROUPS", "STATIC_FEATURES", "MovieLens", "load_movielens"]

#: The users' static features, in the file's order.
STATIC_FEATURES: tuple[str, ...] = ("age", "gender", "occupation", "zip_code")


#: Age groups for attribute inference: (label, lowest age), youngest first.
AGE_GROUPS: tuple[tuple[str, int], ...] = (("<25", 0), ("25-34", 25), ("35-44", 35),
                                           ("45+", 45))


@dataclass(frozen=True)
class MovieLens:
    """Users and ratings as table rows.

    Attributes:
        user_ids: ``[U]`` the dataset's user ids.
        static: feature name -> ``[U]`` int64 row of each user's value.
        vocab: feature name -> the value of each row.
        num_items: rows of the item table.
        ratings_user, ratings_item: ``[N]`` int64 user index (into ``user_ids``) and item row
            of each rating.
        ratings_time: ``[N]`` float64 Unix seconds of each rating.
    """

    user_ids: np.ndarray
    static: dict[str, np.ndarray]
    vocab: dict[str, list[str]]
    num_items: int
    ratings_user: np.ndarray
    ratings_item: np.ndarray
    ratings_time: np.ndarray

    @property
    def num_users(self) -> int:
        return int(self.user_ids.size)

    def attribute(self, name: str) -> np.ndarray:
        """``[U]`` each user's value of static feature ``name`` (strings), or ``"age_group"``
        (:data:`AGE_GROUPS`)."""
        if name == "age_group":
            ages = self.attribute("age").astype(np.int64)
            lows = np.array([low for _, low in AGE_GROUPS])
            names = np.array([g for g, _ in AGE_GROUPS], dtype=object)
            return np.asarray(names[np.searchsorted(lows, ages, side="right") - 1])
        if name not in self.vocab:
            raise ValueError(f"unknown attribute {name!r}; expected one of "
                             f"{', '.join(self.vocab)}, age_group")
        return np.asarray(self.vocab[name], dtype=object)[self.static[name]]

    def labels(self, name: str) -> dict[int, str]:
        """Each user id's value of :meth:`attribute` ``name``."""
        return {int(u): str(v) for u, v in zip(self.user_ids, self.attribute(name))}


def _directory() -> str:
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("MovieLens-100k comes with the recbole wheel: pip install "
                                "--no-deps recbole (or pass the directory of ml-100k.user and "
                                "ml-100k.inter)")
    return os.path.join(os.path.dirname(spec.origin), "dataset_example", "ml-100k")


def _table(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise ValueError(f"{path}: line {bad[0] + 2} has {len(rows[bad[0]])} fields, the header "
                         f"{len(header)}")
    return header, rows


def load_movielens(directory: Union[str, os.PathLike[str], None] = None) -> MovieLens:
    """MovieLens-100k from ``directory`` (``ml-100k.user`` and ``ml-100k.inter`` in recbole's
    atomic format; default: the copy in the recbole wheel).

    Raises:
        FileNotFoundError: no such files (or recbole not installed).
        ValueError: a malformed file (missing columns, ragged lines, unknown users, bad
            numbers).
    """
    root = _directory() if directory is None else os.fspath(directory)
    header, users = _table(os.path.join(root, "ml-100k.user"))
    need = ("user_id", *STATIC_FEATURES)
    missing = [c for c in need if c not in header]
    if missing:
        raise ValueError(f"ml-100k.user lacks the columns {missing}")
    col = {c: header.index(c) for c in need}
    user_ids = np.array([int(r[col["user_id"]]) for r in users], dtype=np.int64)
    static, vocab = {}, {}
    for f in STATIC_FEATURES:
        values = [r[col[f]] for r in users]
        vocab[f] = sorted(set(values), key=lambda v: (len(v), v) if f == "age" else v)
        where = {v: i for i, v in enumerate(vocab[f])}
        static[f] = np.array([where[v] for v in values], dtype=np.int64)
    header, inter = _table(os.path.join(root, "ml-100k.inter"))
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in header]
    if missing:
        raise ValueError(f"ml-100k.inter lacks the columns {missing}")
    u, i, t = (header.index(c) for c in ("user_id", "item_id", "timestamp"))
    index = {int(v): k for k, v in enumerate(user_ids)}
    try:
        ratings_user = np.array([index[int(r[u])] for r in inter], dtype=np.int64)
        ratings_item = np.array([int(r[i]) - 1 for r in inter], dtype=np.int64)
        ratings_time = np.array([float(r[t]) for r in inter], dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"ml-100k.inter rates for an unknown user {e.args[0]}") from None
    if ratings_item.size and ratings_item.min() < 0:
        raise ValueError("ml-100k.inter has item ids below 1")
    return MovieLens(user_ids, static, vocab, int(ratings_item.max()) + 1 if inter else 0,
                     ratings_user, ratings_item, ratings_time)

