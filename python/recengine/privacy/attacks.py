"""The access-pattern attacks, each a function over what a host sees: the rows each request
reads (:meth:`~.trace.Recorder.rows_by_request`), never the raw data.

* :func:`identify`: users bucketed by the rows their static features read (k-anonymity of the
  feature combination): how many buckets, their sizes, how many users are alone in theirs.
* :func:`link`: the same, against defences whose traces change from request to request: a
  user's key from one session is matched to the keys of an earlier one, and counts when it
  singles out that user; :func:`intersect_sessions` keeps the rows several linked sessions
  all read (what strips the dummy rows of padding).
* :func:`infer_attribute`: a sensitive attribute (gender, an age group) guessed from the item
  rows a user's requests read, by a logistic regression trained on the other users' traces
  (k-fold), against the majority class; and :func:`single_bucket_items`, the share of
  items whose readers all share one static-feature bucket.
* :func:`reidentify`: each user fingerprinted by the rows one request's history read in a
  first time window (the user known then), a later anonymous request matched to the
  fingerprint it overlaps most: top-1 accuracy.
* :func:`invert_hash`: ids hashed to rows as ``(x + mask) mod P`` do not hide them: the mask
  whose shifted public popularity best matches the observed row frequencies is recovered,
  and with it every id.

Example::

    >>> import numpy as np
    >>> seen = {"u1": {"age": np.array([3]), "sex": np.array([0])},
    ...         "u2": {"age": np.array([3]), "sex": np.array([0])},
    ...         "u3": {"age": np.array([5]), "sex": np.array([1])}}
    >>> r = identify(seen, ["age", "sex"])
    >>> r.buckets, r.one_anonymous, r.users
    (2, 1, 3)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["PENALTIES", "HashInversion", "Identification", "Inference", "Linking",
           "Reidentification", "identify", "infer_attribute", "intersect_sessions",
           "invert_hash", "link", "reidentify", "single_bucket_items"]

#: What the attacks read: per request, per table, the rows read in order.
Seen = Mapping[Optional[Hashable], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Identification:
    """Users bucketed by their static features' rows.

    Attributes:
        tables: the tables whose rows form a bucket's key.
        users: requests bucketed.
        buckets: distinct keys.
        one_anonymous: users alone in their bucket.
        sizes: bucket size -> how many buckets have it.
    """

    tables: tuple[str, ...]
    users: int
    buckets: int
    one_anonymous: int
    sizes: dict[int, int]

    @property
    def one_anonymous_share(self) -> float:
        return self.one_anonymous / self.users if self.users else 0.0


def _bucket(rows: Mapping[str, np.ndarray], tables: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """A request's key: the rows it read from each of ``tables``, in order (empty where it
    read none)."""
    return tuple(tuple(np.asarray(rows.get(t, ())).tolist()) for t in tables)


def identify(seen: Seen, tables: Sequence[str]) -> Identification:
    """Bucket every request of ``seen`` by the rows it read from ``tables`` (in order; a
    request that did not read a table has an empty key part there)."""
    if not tables:
        raise ValueError("identification needs at least one table")
    keys = Counter(_bucket(rows, tables) for rows in seen.values())
    users = sum(keys.values())
    sizes = Counter(keys.values())
    return Identification(tuple(tables), users, len(keys), sizes.get(1, 0),
                          dict(sorted(sizes.items())))


@dataclass(frozen=True)
class Linking:
    """Users told apart across two sessions by their static features' rows.

    Attributes:
        tables: the tables whose rows form a key (the set of rows each read).
        users: users in both sessions.
        linked_alone: users whose second-session key equals the first-session key of exactly
            one user, themselves.
    """

    tables: tuple[str, ...]
    users: int
    linked_alone: int


def _row_sets(rows: Mapping[str, np.ndarray], tables: Sequence[str]
              ) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(np.unique(np.asarray(rows.get(t, ()), dtype=np.int64)).tolist())
                 for t in tables)


def link(first: Seen, second: Seen, tables: Sequence[str]) -> Linking:
    """Match each user's ``second``-session key (the set of rows read from each of
    ``tables``) to the ``first``-session keys; a user counts when the match is exactly one
    user, themselves. With traces that never change (no defence, the scan) this is the users
    alone in their bucket; with fresh randomness in every request (ORAM paths, dummy rows) a
    key matches nobody unless the randomness is stripped.

    Example::

        >>> a = {"u1": {"age": np.array([3])}, "u2": {"age": np.array([5])}}
        >>> link(a, a, ["age"]).linked_alone
        2
        >>> link(a, {"u1": {"age": np.array([9])}, "u2": {"age": np.array([5])}},
        ...      ["age"]).linked_alone
        1
    """
    if not tables:
        raise ValueError("linking needs at least one table")
    keys: dict[tuple[tuple[int, ...], ...], list[Hashable]] = {}
    for user, rows in first.items():
        keys.setdefault(_row_sets(rows, tables), []).append(user)
    both = [u for u in second if u in first]
    alone = sum(keys.get(_row_sets(second[u], tables), []) == [u] for u in both)
    return Linking(tuple(tables), len(both), alone)


def intersect_sessions(sessions: Sequence[Seen]) -> dict[Optional[Hashable], dict[str, np.ndarray]]:
    """Per request tag and table, the rows every one of ``sessions`` read (sorted): linked
    sessions of one user intersected, what is left of padding's dummy rows.

    Example::

        >>> s1 = {"u": {"age": np.array([3, 7, 1])}}
        >>> s2 = {"u": {"age": np.array([2, 3, 1])}}
        >>> intersect_sessions([s1, s2])["u"]["age"].tolist()
        [1, 3]
    """
    if not sessions:
        raise ValueError("need at least one session")
    out: dict[Optional[Hashable], dict[str, np.ndarray]] = {}
    for tag, rows in sessions[0].items():
        if all(tag in s for s in sessions[1:]):
            out[tag] = {t: np.unique(r) for t, r in rows.items()}
            for s in sessions[1:]:
                out[tag] = {t: np.intersect1d(r, s[tag].get(t, ())) for t, r in out[tag].items()}
    return out


@dataclass(frozen=True)
class Inference:
    """A sensitive attribute guessed from the rows each user's requests read.

    Attributes:
        users: users guessed (each by a classifier that never saw them).
        accuracy: the share guessed right.
        baseline: the share the majority class (of each fold's training users) gets right.
        classes: the attribute's values.
    """

    users: int
    accuracy: float
    baseline: float
    classes: tuple[str, ...]


def _user_rows(seen: Seen, table: str) -> dict[Hashable, np.ndarray]:
    return {u: np.unique(np.asarray(rows[table])) for u, rows in seen.items()
            if u is not None and table in rows and len(rows[table])}


def _fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float) -> np.ndarray:
    """Multinomial logistic regression with an L2 penalty ``l2`` (per user): weights
    ``[features + 1, classes]`` (the last row the bias), by L-BFGS."""
    from scipy.optimize import minimize  # type: ignore[import-untyped]
    from scipy.special import logsumexp  # type: ignore[import-untyped]

    n, d = x.shape
    onehot = np.eye(classes)[y]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        wm, b = w[:d * classes].reshape(d, classes), w[d * classes:]
        z = x @ wm + b
        lse = logsumexp(z, axis=1)
        g = (np.exp(z - lse[:, None]) - onehot) / n
        value = float((lse - (z * onehot).sum(axis=1)).sum() / n + l2 / 2 * (wm ** 2).sum() / n)
        return value, np.concatenate([(x.T @ g + l2 * wm / n).ravel(), g.sum(axis=0)])

    got = minimize(loss, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": 300})
    return np.vstack([got.x[:d * classes].reshape(d, classes), got.x[d * classes:]])


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray((x @ w[:-1] + w[-1]).argmax(axis=1))


#: The L2 penalties :func:`infer_attribute` chooses from, on held-out training users.
PENALTIES: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)


def infer_attribute(seen: Seen, table: str, labels: Mapping[Any, str], folds: int = 5,
                    penalties: Sequence[float] = PENALTIES, seed: int = 0) -> Inference:
    """Guess ``labels[user]`` from the set of ``table`` rows the user's requests read in
    ``seen`` (users in both): for each of ``folds`` random folds, a multinomial logistic
    regression trained on the other folds' users (its L2 penalty chosen from ``penalties`` on
    a quarter of them held out), scored on the fold's users."""
    rows = _user_rows(seen, table)
    users = [u for u in rows if u in labels]
    if folds < 2 or len(users) < 2 * folds:
        raise ValueError(f"need folds >= 2 and at least twice that many labelled users, got "
                         f"{folds} folds and {len(users)} users")
    if not penalties or min(penalties) <= 0:
        raise ValueError("penalties must be positive")
    classes = tuple(sorted({labels[u] for u in users}))
    width = int(max(int(rows[u].max()) for u in users)) + 1
    x = np.zeros((len(users), width))
    for i, u in enumerate(users):
        x[i, rows[u]] = 1.0
    y = np.array([classes.index(labels[u]) for u in users])
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(users)) % folds
    right = majority = 0
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        inner = rng.permutation(train)
        hold, fit = inner[:len(inner) // 4], inner[len(inner) // 4:]
        best = max(penalties, key=lambda p: (
            _predict(_fit(x[fit], y[fit], len(classes), p), x[hold]) == y[hold]).mean())
        w = _fit(x[train], y[train], len(classes), best)
        right += int((_predict(w, x[test]) == y[test]).sum())
        majority += int((y[test] == np.bincount(y[train], minlength=len(classes)).argmax()
                         ).sum())
    n = len(users)
    return Inference(n, right / n, majority / n, classes)


def single_bucket_items(seen: Seen, table: str, bucket_tables: Sequence[str]) -> float:
    """The share of ``table``'s rows read by some user whose readers all fall in one bucket
    of ``bucket_tables``' rows (:func:`identify`'s key): an item that gives its readers'
    bucket away."""
    buckets: dict[int, set[tuple[tuple[int, ...], ...]]] = {}
    for rows in seen.values():
        if table not in rows:
            continue
        key = _bucket(rows, bucket_tables)
        for r in np.unique(np.asarray(rows[table])).tolist():
            buckets.setdefault(r, set()).add(key)
    if not buckets:
        raise ValueError(f"no request read table {table!r}")
    return sum(len(b) == 1 for b in buckets.values()) / len(buckets)


@dataclass(frozen=True)
class Reidentification:
    """Later requests matched to fingerprints.

    Attributes:
        users: users fingerprinted and matched.
        accuracy: top-1 accuracy (a tie among ``t`` fingerprints that holds the right one
            counts ``1 / t``).
        unique: the share of users whose fingerprint no other user shares.
    """

    users: int
    accuracy: float
    unique: float


def reidentify(seen: Seen, table: str, split: float = 0.5, gap: int = 1) -> Reidentification:
    """Match users across time from ``seen``'s ``(user, time)``-tagged requests: a user's
    fingerprint is the set of ``table`` rows read by their request at ``split`` of their
    requests (the end of the first window, the user known then); later traffic is their
    request ``gap`` requests after it, its user unknown; it is matched to the fingerprint
    that shares the most rows with it. Users with too few requests are left out."""
    if not 0 < split < 1 or gap < 1:
        raise ValueError(f"need 0 < split < 1 and gap >= 1, got {split}, {gap}")
    by_user: dict[Hashable, list[tuple[float, np.ndarray]]] = {}
    for tag, rows in seen.items():
        if isinstance(tag, tuple) and len(tag) == 2 and table in rows and len(rows[table]):
            by_user.setdefault(tag[0], []).append((tag[1], np.unique(rows[table])))
    prints, later = [], []
    for reqs in by_user.values():
        reqs.sort(key=lambda p: p[0])
        at = int(split * (len(reqs) - 1))
        if at + gap < len(reqs):
            prints.append(reqs[at][1])
            later.append(reqs[at + gap][1])
    if not prints:
        raise ValueError(f"no user has {gap + 1} requests reading {table!r}")
    width = int(max(max(int(p.max()) for p in prints), max(int(q.max()) for q in later))) + 1
    fp = np.zeros((len(prints), width), dtype=np.float32)
    lq = np.zeros((len(later), width), dtype=np.float32)
    for i, (p, q) in enumerate(zip(prints, later)):
        fp[i, p], lq[i, q] = 1.0, 1.0
    overlap = lq @ fp.T  # [later request, fingerprint]
    best = overlap.max(axis=1, keepdims=True)
    ties = (overlap == best).sum(axis=1)
    right = np.diag(overlap) == best[:, 0]
    keys = Counter(tuple(p.tolist()) for p in prints)
    unique = sum(keys[tuple(p.tolist())] == 1 for p in prints) / len(prints)
    return Reidentification(len(prints), float((right / ties).mean()), unique)


@dataclass(frozen=True)
class HashInversion:
    """What frequency matching recovers of ids hashed as ``(x + mask) mod P``.

    Attributes:
        mask: the mask whose shifted popularity best matches the rows' frequencies.
        lookups: lookups observed.
        margin: the best match's score over the second best's (1: a tie).
        ranked: the share of observed rows that plain frequency-rank matching (the r-th most
            read row is the r-th most popular id) maps to the right id, for the true ``mask``
            given; None without it.
    """

    mask: int
    lookups: int
    margin: float
    ranked: Optional[float]


def invert_hash(seen: Seen, table: str, prior: np.ndarray, modulus: int,
                true_mask: Optional[int] = None) -> HashInversion:
    """Recover the mask of ``(x + mask) mod modulus`` from the ``table`` rows ``seen`` read
    and the public popularity ``prior`` ``[N]`` of ids ``0..N-1`` (``N <= modulus``): the
    mask maximising the correlation of observed row counts with the shifted prior."""
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or not 0 < prior.size <= modulus:
        raise ValueError(f"prior must be 1-D with 1 to modulus ({modulus}) ids")
    rows = [np.asarray(r[table]) for r in seen.values() if table in r]
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    if not flat.size:
        raise ValueError(f"no request read table {table!r}")
    if flat.min() < 0 or flat.max() >= modulus:
        raise ValueError(f"rows outside [0, {modulus})")
    counts = np.bincount(flat, minlength=modulus).astype(np.float64)
    padded = np.zeros(modulus)
    padded[:prior.size] = prior / prior.sum()
    # score[m] = sum_x prior[x] * counts[(x + m) % modulus], all m at once by FFT
    score = np.fft.irfft(np.conj(np.fft.rfft(padded)) * np.fft.rfft(counts), modulus)
    order = np.argsort(score)[::-1]
    mask = int(order[0])
    margin = float(score[order[0]] / score[order[1]]) if modulus > 1 and score[order[1]] > 0 \
        else float("inf")
    ranked = None
    if true_mask is not None:
        seen_rows = np.flatnonzero(counts)
        # More rows than ids can be read (dummy rows): rank the most read against the ids.
        by_count = seen_rows[np.argsort(-counts[seen_rows], kind="stable")][:prior.size]
        by_prior = np.argsort(-prior, kind="stable")[:by_count.size]
        truth = (by_count - true_mask) % modulus
        ranked = float((truth == by_prior).mean())
    return HashInversion(mask, int(flat.size), margin, ranked)
