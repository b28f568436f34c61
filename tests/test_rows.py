"""Row distributions for synthetic lookups: ranges, skew, the production fit, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.rows import DISTRIBUTIONS, draw_rows, production_alpha, top_share


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(DISTRIBUTIONS), st.integers(1, 5000), st.integers(0, 300),
       st.floats(0.1, 2.0), st.integers(0, 2**31 - 1))
def test_rows_lie_in_the_table(dist: str, n: int, k: int, alpha: float, seed: int) -> None:
    rows = draw_rows(np.random.default_rng(seed), n, k, dist, alpha)
    assert rows.dtype == np.int64 and rows.shape == (k,)
    assert k == 0 or (rows.min() >= 0 and rows.max() < n)


def test_skew_grows_with_the_exponent_and_production_matches_movielens() -> None:
    n, k = 10_000, 200_000
    rng = np.random.default_rng(0)

    def measured_top10(rows: np.ndarray) -> float:
        counts = np.sort(np.bincount(rows, minlength=n))[::-1]
        return counts[: n // 10].sum() / rows.size

    uniform = measured_top10(draw_rows(rng, n, k, "uniform"))
    zipf = measured_top10(draw_rows(rng, n, k, "zipf", 1.0))
    prod = measured_top10(draw_rows(rng, n, k, "production"))
    assert uniform < 0.15 < prod < zipf
    assert abs(top_share(n, production_alpha(n)) - 0.427) < 1e-3
    assert abs(prod - 0.427) < 0.03
    pareto = np.bincount(draw_rows(rng, n, k, "pareto", 0.25), minlength=n)
    assert pareto.max() > 50 * k / n  # heavy hitters


def test_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown row distribution"):
        draw_rows(rng, 10, 5, "normal")
    with pytest.raises(ValueError, match="at least one row"):
        draw_rows(rng, 0, 5)
    with pytest.raises(ValueError, match="Pareto shape"):
        draw_rows(rng, 10, 5, "pareto", 0.0)
    with pytest.raises(ValueError, match="Zipf exponent"):
        draw_rows(rng, 10, 5, "zipf", -1.0)
