"""The study's defence parts: the cost sweep's rows and extrapolation, the crossover, the
linking attack against traces that change per request, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from recengine.privacy import intersect_sessions, link
from recengine.privacy.cost import crossover, measure, medians_in_turn
from recengine.privacy.study import Config


def test_cost_rows_and_the_scan_extrapolated_past_its_limit() -> None:
    rows = list(measure([300], [1, 64], dim=8, budget_s=0.005, max_call_s=1e-9))
    assert [(r["defence"], r["batch"]) for r in rows] == [
        (d, b) for b in (1, 64) for d in ("scan", "oram", "pad")]
    for r in rows:
        assert r["attack"] == "cost" and r["metric"] == "lookups_per_s"
        assert r["value"] == r["lookups_per_s"] > 0 and r["baseline"] > 0
        assert r["slowdown"] == pytest.approx(r["baseline"] / r["value"])
    scan1, scan64 = (r for r in rows if r["defence"] == "scan")
    assert not scan1["estimated"] and scan64["estimated"]
    # Extrapolated linearly in the batch: the same lookups/s as the batch measured.
    assert scan64["lookups_per_s"] == pytest.approx(scan1["lookups_per_s"])
    oram = next(r for r in rows if r["defence"] == "oram")
    assert oram["levels"] == [9] and oram["blocks_per_lookup"] == 36
    with pytest.raises(ValueError, match="unknown defences"):
        list(measure([10], [1], defences=["shuffle"]))


def test_crossover_and_the_timer() -> None:
    def row(d: str, n: int, v: float) -> dict[str, object]:
        return {"attack": "cost", "defence": d, "rows": n, "batch": 4, "lookups_per_s": v}
    assert crossover([row("scan", 10, 1), row("oram", 10, 2)]) == {4: None}
    assert crossover([row("scan", 10, 3), row("oram", 10, 2), row("scan", 99, 1),
                      row("oram", 99, 2)]) == {4: 10}
    calls: list[int] = []
    (t,) = medians_in_turn([lambda: calls.append(1)], budget_s=0.002)
    assert t >= 0 and len(calls) >= 3
    calls.clear()  # a call longer than three budgets: measured once
    medians_in_turn([lambda: calls.append(1)], budget_s=0.0)
    assert len(calls) == 1


def test_linking_sees_through_padding_only_over_linked_sessions() -> None:
    rng = np.random.default_rng(0)
    truth = {u: {"zip": np.array([u])} for u in range(50)}

    def padded() -> dict[object, dict[str, np.ndarray]]:  # the real row and 7 dummies
        return {u: {"zip": rng.permutation(np.r_[r["zip"], rng.integers(0, 1000, 7)])}
                for u, r in truth.items()}
    assert link(truth, truth, ["zip"]).linked_alone == 50
    assert link(padded(), padded(), ["zip"]).linked_alone == 0
    first = intersect_sessions([padded() for _ in range(4)])
    second = intersect_sessions([padded() for _ in range(4)])
    assert link(first, second, ["zip"]).linked_alone == 50
    with pytest.raises(ValueError, match="at least one table"):
        link(truth, truth, [])
    with pytest.raises(ValueError, match="at least one session"):
        intersect_sessions([])


def test_study_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown defences"):
        Config(defences=("scan", "shuffle"))
    with pytest.raises(ValueError, match="unknown attacks"):
        Config(attacks=("costs",))
    with pytest.raises(ValueError, match="pad_count"):
        Config(pad_count=0)
    with pytest.raises(ValueError, match="cost_rows and batches"):
        Config(batches=())
