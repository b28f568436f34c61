"""Hercules' first-stage search on synthetic surfaces, against the exhaustive grid."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.hercules.search import Space, gradient_search, grid_search

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def test_a_concave_surface_is_climbed_to_its_peak_with_few_evaluations() -> None:
    space = Space({"a": tuple(range(12)), "b": tuple(range(12)), "c": BATCHES})
    peak = {"a": 9, "b": 2, "c": 128}

    def f(p: dict) -> float:
        return 1000 - (p["a"] - 9) ** 2 - 3 * (p["b"] - 2) ** 2 \
            - 5 * (math.log2(p["c"]) - 7) ** 2

    grid = grid_search(space, f)
    best = gradient_search(space, f)
    assert grid.point == peak and best.point == peak
    assert best.evaluations <= 0.15 * grid.evaluations
    assert grid.evaluations == 12 ** 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(2, 7), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_unimodal_surfaces_match_the_grid(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    space = Space({f"d{i}": tuple(range(n)) for i, n in enumerate(sizes)})
    target = [int(rng.integers(0, n)) for n in sizes]
    weights = rng.uniform(0.5, 3.0, len(sizes))

    def f(p: dict) -> float:
        return -sum(w * abs(p[f"d{i}"] - t) for i, (w, t) in enumerate(zip(weights, target)))

    assert gradient_search(space, f).value == pytest.approx(grid_search(space, f).value)


def test_points_the_space_rules_out_are_never_run() -> None:
    cores = 16
    space = Space({"instances": (1, 2, 4, 8, 16), "threads": (1, 2, 4, 8, 16)},
                  allowed=lambda p: p["instances"] * p["threads"] <= cores)
    ran = []

    def f(p: dict) -> float:
        ran.append(p)
        # More instances help until the cores are shared out; threads a little.
        return p["instances"] * 10 + p["threads"]

    best = gradient_search(space, f)
    assert all(p["instances"] * p["threads"] <= cores for p in ran)
    assert best.point == grid_search(space, f).point == {"instances": 16, "threads": 1}


def test_starts_find_a_second_peak_and_unrunnable_points_are_skipped() -> None:
    space = Space({"x": tuple(range(30))})
    # Two peaks: a low one at 8 (next to the centre), a high one at 27; points 20-22 cannot run.
    low, high = 8, 27

    def f(p: dict) -> float | None:
        if 20 <= p["x"] <= 22:
            return None
        return max(10 - abs(p["x"] - low), 20 - 2 * abs(p["x"] - high))

    assert gradient_search(space, f).point == {"x": low}
    assert gradient_search(space, f, starts=[{"x": 25}]).point == {"x": high}
    # A climb that starts at a point that cannot run steps to a runnable neighbour.
    assert gradient_search(space, f, starts=[{"x": 22}], tolerance=0.01).value == 20


def test_the_tolerance_stops_on_gains_smaller_than_the_noise() -> None:
    space = Space({"x": tuple(range(64))})

    def f(p: dict) -> float:
        return 100.0 + 0.001 * p["x"]  # a slope far below a 1% run-to-run spread

    flat = gradient_search(space, f, tolerance=0.01)
    assert flat.evaluations <= 3
    assert gradient_search(space, f).point == {"x": 63}
    assert gradient_search(space, f, max_evaluations=5).evaluations <= 5


def test_bad_searches_get_clear_errors() -> None:
    space = Space({"x": (1, 2, 3)})
    with pytest.raises(ValueError, match="finite number or None"):
        gradient_search(space, lambda p: float("nan"))
    with pytest.raises(ValueError, match="could run"):
        grid_search(space, lambda p: None)
    with pytest.raises(ValueError, match="not a point"):
        gradient_search(space, lambda p: 1.0, starts=[{"x": 7}])
    with pytest.raises(ValueError, match="tolerance"):
        gradient_search(space, lambda p: 1.0, tolerance=-1)
    with pytest.raises(ValueError, match="no values"):
        Space({"x": ()})
    with pytest.raises(ValueError, match="no allowed point"):
        grid_search(Space({"x": (1, 2)}, allowed=lambda p: False), lambda p: 1.0)


def test_the_module_example_runs() -> None:
    module = importlib.import_module("recengine.hercules.search")
    assert doctest.testmod(module).failed == 0
