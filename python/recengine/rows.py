"""Row (index) distributions for synthetic embedding lookups (DeepRecInfra).

* ``"uniform"``: every row equally likely.
* ``"zipf"``: a bounded Zipf law of exponent ``alpha`` over the table's rows, ``P(rank r) ~
  1 / r**alpha`` for ranks 1..n, the ranking a random permutation of the rows (FBGEMM's
  generator treats ``alpha <= 1`` as uniform; here any ``alpha > 0`` skews).
* ``"pareto"``: MLPerf DLRM's multi-hot generator, ``int(pareto(a=alpha)) % n`` (``alpha``
  defaults to 0.25 there), rows permuted.
* ``"production"``: the Zipf law whose exponent makes the hottest 10% of rows take 42.7% of
  the lookups, as MovieLens-100k measures (DeepRecInfra); :func:`production_alpha` solves for it.

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> draw_rows(rng, 1000, 5, "zipf", 1.0).shape
    (5,)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["DISTRIBUTIONS", "draw_rows", "production_alpha", "top_share", "zipf_rows"]

#: The row distributions :func:`draw_rows` knows.
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "zipf", "pareto", "production")

#: MovieLens-100k: the hottest 10% of items take this share of the accesses (DeepRecInfra).
_PRODUCTION_TOP10 = 0.427


def zipf_rows(rng: np.random.Generator, n: int, s: float, k: int) -> np.ndarray:
    """``k`` rows of a table of ``n``: uniform for ``s == 0``, else a bounded Zipf law,
    ``P(rank r) ~ 1 / r**s`` for ranks 1..n, the ranking a random permutation of the rows.
    (With s = 1 over a million rows, the 64 hottest rows take a third of the lookups.)"""
    if s <= 0:
        return rng.integers(0, n, k)
    cdf = _zipf_cdf(n, s)
    ranks = np.searchsorted(cdf, rng.random(k) * cdf[-1])
    return rng.permutation(n)[np.minimum(ranks, n - 1)]


@lru_cache(maxsize=16)
def _zipf_cdf(n: int, s: float) -> np.ndarray:
    """The cumulative weights ``sum(r**-s for r <= i)`` of ranks 1..n (read-only, cached: a
    stream's tables share them)."""
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
    cdf.flags.writeable = False
    return cdf


def top_share(n: int, alpha: float, fraction: float = 0.1) -> float:
    """The share of lookups the hottest ``fraction`` of ``n`` rows take under a bounded Zipf
    law of exponent ``alpha``."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    top = max(1, round(fraction * n))
    return float(w[:top].sum() / w.sum())


@lru_cache(maxsize=64)
def production_alpha(n: int) -> float:
    """The Zipf exponent at which the hottest 10% of ``n`` rows take 42.7% of the lookups
    (MovieLens-100k's measured skew), found by bisection (the share grows with ``alpha``)."""
    if n < 10:
        return 0.0
    lo, hi = 0.0, 4.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if top_share(n, mid) < _PRODUCTION_TOP10:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def draw_rows(rng: np.random.Generator, n: int, k: int, distribution: str = "uniform",
              alpha: float = 1.0) -> np.ndarray:
    """``k`` rows (int64, shape ``(k,)``) of a table of ``n`` rows from ``distribution``
    (one of :data:`DISTRIBUTIONS`; ``alpha`` is the Zipf exponent or the Pareto shape)."""
    if n < 1:
        raise ValueError(f"a table needs at least one row, got {n}")
    if k < 0:
        raise ValueError(f"cannot draw {k} rows")
    if distribution == "uniform":
        return rng.integers(0, n, k, dtype=np.int64)
    if distribution == "zipf":
        if alpha < 0:
            raise ValueError(f"the Zipf exponent must be >= 0, got {alpha}")
        return zipf_rows(rng, n, alpha, k).astype(np.int64)
    if distribution == "pareto":
        if not alpha > 0:
            raise ValueError(f"the Pareto shape must be > 0, got {alpha}")
        raw = np.minimum(rng.pareto(alpha, k), 2.0**62).astype(np.int64) % n
        return rng.permutation(n)[raw].astype(np.int64)
    if distribution == "production":
        return zipf_rows(rng, n, production_alpha(n), k).astype(np.int64)
    raise ValueError(f"unknown row distribution {distribution!r}; expected one of "
                     f"{', '.join(DISTRIBUTIONS)}")
