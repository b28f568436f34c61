"""Query streams: the moments of every arrival process and size distribution, replay,
percentile files, real item popularity, reproducibility and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.workload import (
    ARRIVALS,
    MAX_QUERY_SIZE,
    QuerySizes,
    Workload,
    arrival_times,
    interaction_counts,
    interaction_rows,
    load_arrivals,
)


@pytest.mark.parametrize("process", ARRIVALS)
def test_arrivals_have_the_asked_mean_rate(process: str) -> None:
    a = arrival_times(200.0, 40_000, process, np.random.default_rng(1), period_s=5.0)
    assert a.shape == (40_000,) and np.all(np.diff(a) >= 0) and a[0] >= 0
    assert len(a) / a[-1] == pytest.approx(200.0, rel=0.03)


def test_poisson_gaps_are_exponential_and_ms_gaps_whole_milliseconds() -> None:
    gaps = np.diff(arrival_times(50.0, 50_000, "poisson", np.random.default_rng(2)))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential: CV 1
    ms = np.diff(arrival_times(50.0, 5_000, "poisson-ms", np.random.default_rng(2))) * 1e3
    np.testing.assert_allclose(ms, np.round(ms), atol=1e-6)


def test_diurnal_rate_follows_the_curve() -> None:
    a = arrival_times(100.0, 60_000, "diurnal", np.random.default_rng(3), period_s=100.0,
                      amplitude=0.8)
    phase = (a % 100.0) / 100.0
    peak = np.mean((phase > 0.15) & (phase < 0.35))  # around sin = 1
    trough = np.mean((phase > 0.65) & (phase < 0.85))  # around sin = -1
    assert peak > 4 * trough


def test_lognormal_and_normal_sizes_have_their_moments() -> None:
    rng = np.random.default_rng(4)
    s = QuerySizes.lognormal().sample(rng, 100_000)
    assert np.median(s) == pytest.approx(np.exp(5.1), rel=0.02)
    assert np.log(s).std() == pytest.approx(0.2, rel=0.05)
    s = QuerySizes.normal(256, 32).sample(rng, 100_000)
    assert s.mean() == pytest.approx(256, rel=0.01) and s.std() == pytest.approx(32, rel=0.03)
    assert set(QuerySizes.fixed(7).sample(rng, 10).tolist()) == {7}


@settings(max_examples=30, deadline=None)
@given(st.floats(-5, 12), st.floats(0, 3), st.integers(0, 2**31 - 1))
def test_sizes_are_clipped_to_the_query_range(mu: float, sigma: float, seed: int) -> None:
    for dist in (QuerySizes.lognormal(mu, sigma), QuerySizes.normal(np.exp(mu), sigma * 500)):
        s = dist.sample(np.random.default_rng(seed), 200)
        assert s.dtype == np.int64 and s.min() >= 1 and s.max() <= MAX_QUERY_SIZE


def test_percentile_file_gives_its_quantiles(tmp_path) -> None:
    path = tmp_path / "sizes.csv"
    path.write_text("# percentile,size\n0,10\n50,100\n90,300\n99,900\n100,1000\n")
    s = QuerySizes.from_percentiles(path).sample(np.random.default_rng(5), 200_000)
    assert np.median(s) == pytest.approx(100, rel=0.03)
    assert np.percentile(s, 90) == pytest.approx(300, rel=0.03)
    one_column = QuerySizes.from_percentiles(np.array([1.0, 1024.0]))
    assert one_column.sample(np.random.default_rng(0), 50_000).mean() == pytest.approx(512,
                                                                                      rel=0.02)
    for text, match in [("50 10\n40 20\n", "increase"), ("0 10\n100 5\n", "not decrease"),
                        ("0 x\n", "numbers"), ("0 10\n", "at least 2")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            QuerySizes.from_percentiles(path)


def test_size_specs_parse_to_their_distributions(tmp_path) -> None:
    assert QuerySizes.parse("lognormal:4.5,1") == QuerySizes.lognormal(4.5, 1.0)
    assert QuerySizes.parse("normal:256,32") == QuerySizes.normal(256, 32)
    assert QuerySizes.parse("fixed:64") == QuerySizes.fixed(64)
    path = tmp_path / "sizes.txt"
    path.write_text("0 1\n100 9\n")
    assert QuerySizes.parse(str(path)).sample(np.random.default_rng(0), 100).max() <= 9
    for spec, err in [("pareto:1,2", ValueError), ("lognormal:1", ValueError),
                      ("normal:a,b", ValueError), ("nofile.txt", FileNotFoundError)]:
        with pytest.raises(err):
            QuerySizes.parse(spec)


def test_replay_reads_text_and_npy(tmp_path) -> None:
    (tmp_path / "t.txt").write_text("# seconds\n0.5\n0.1\n0.3\n")
    np.testing.assert_array_equal(load_arrivals(tmp_path / "t.txt"), [0.1, 0.3, 0.5])
    np.save(tmp_path / "t.npy", np.array([2.0, 1.0]))
    np.testing.assert_array_equal(load_arrivals(tmp_path / "t.npy"), [1.0, 2.0])
    (tmp_path / "bad.txt").write_text("1.0\n-2.0\n")
    with pytest.raises(ValueError, match="non-negative"):
        load_arrivals(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError):
        load_arrivals(tmp_path / "none.txt")


def test_workloads_repeat_from_their_seed() -> None:
    a = Workload(80.0, seed=9).queries(100)
    b = Workload(80.0, seed=9).queries(100)
    c = Workload(80.0, seed=10).queries(100)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def _inter(tmp_path, items: list[int]) -> str:
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\n"
                    + "".join(f"1\t{i}\t3\n" for i in items))
    return str(path)


def test_interaction_popularity_carries_over_to_table_rows(tmp_path) -> None:
    items = [0] * 60 + [1] * 20 + list(range(2, 22))  # 22 items, two hot ones
    counts = interaction_counts(_inter(tmp_path, items))
    assert counts.tolist()[:2] == [60, 20] and counts.sum() == len(items)
    rows = interaction_rows(np.random.default_rng(0), 2200, 200_000, counts)
    assert rows.min() >= 0 and rows.max() < 2200
    top = np.sort(np.bincount(rows, minlength=2200))[::-1]
    assert top[:100].sum() / rows.size == pytest.approx(0.6, abs=0.01)  # hottest item's rows
    (tmp_path / "bad.inter").write_text("user_id:token\trating:float\n1\t3\n")
    with pytest.raises(ValueError, match="item_id"):
        interaction_counts(tmp_path / "bad.inter")


def test_movielens_from_recbole_has_the_measured_skew() -> None:
    try:
        counts = interaction_counts()
    except FileNotFoundError:
        pytest.skip("recbole (MovieLens-100k) is not installed")
    m = len(counts)
    assert counts[: m // 10].sum() / counts.sum() == pytest.approx(0.427, abs=0.005)
    assert counts[: m // 5].sum() / counts.sum() == pytest.approx(0.646, abs=0.005)


@pytest.mark.parametrize("call, match", [
    (lambda: arrival_times(0, 5), "positive"),
    (lambda: arrival_times(10, 5, "bursty"), "unknown arrival"),
    (lambda: arrival_times(10, 5, "diurnal", amplitude=2), "amplitude"),
    (lambda: QuerySizes.fixed(0), "fixed query size"),
    (lambda: QuerySizes.lognormal(sigma=-1), "sigma"),
    (lambda: interaction_rows(np.random.default_rng(0), 10, 5, np.array([])), "counts"),
])
def test_bad_workload_arguments_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
