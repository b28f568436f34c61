"""The disagg study's configuration errors and its summary arithmetic (the runs themselves are
in tests/studies/test_study_keys.py and test_deploy.py)."""

from __future__ import annotations

import pytest
from recengine.disagg.study import Config, summarize_study


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="2 cores"):
        Config(cores=1)
    with pytest.raises(ValueError, match="leave a core"):
        Config(cores=4, compute_nodes=4)
    with pytest.raises(ValueError, match="architecture"):
        Config(architectures=("monolithic", "hybrid"))
    with pytest.raises(ValueError, match="failure_load"):
        Config(failure_load=0)
    with pytest.raises(ValueError, match="10 queries"):
        Config(queries=5)
    assert Config(cores=1, architectures=("monolithic",), tco=False).cores == 1
    with pytest.raises(ValueError, match="rpc_ms"):
        Config(cores=1, architectures=("monolithic",))
    assert Config(cores=1, architectures=("monolithic",), rpc_ms=0.5).rpc_ms == 0.5
    with pytest.raises(ValueError, match="rpc_ms"):
        Config(rpc_ms=-1)
    with pytest.raises(ValueError, match="table_multiplier"):
        Config(table_multiplier=0)
    with pytest.raises(ValueError, match="at least one model"):
        Config(tco_models=[])
    with pytest.raises(ValueError, match="unknown model"):
        Config(tco_models=["rmc9"])
    c = Config(cores=6)
    assert (c.compute_nodes, c.target_ms) == (3, 100.0)


def test_the_summary_counts_lost_queries_and_checks_the_accounts() -> None:
    rows = [
        {"kind": "deployment", "architecture": "monolithic", "failure": None, "qps": 100.0},
        {"kind": "deployment", "architecture": "disaggregated", "failure": None, "qps": 80.0},
        {"kind": "deployment", "architecture": "disaggregated", "failure": "memory node 0",
         "qps": 48.0, "queries": 10, "served": 7, "shed": 1, "failed": 2, "lost_queries": 3},
        {"kind": "deployment", "architecture": "monolithic", "failure": "compute node 0",
         "qps": 60.0, "queries": 10, "served": 10, "shed": 0, "failed": 0, "lost_queries": 0},
    ]
    s = summarize_study(rows)
    assert s["qps_ratio"] == pytest.approx(0.8) and s["lost_queries"] == 3 and s["accounted"]
    rows[2]["served"] = 6  # one query unaccounted for
    assert not summarize_study(rows)["accounted"]
    assert summarize_study(rows)["tco"] == {} and summarize_study(rows)["break_even_rpc_s"] == {}
    grid = [{"kind": "regime", "architecture": "disaggregated", "saving": s}
            for s in (0.3, -0.1, 0.2, -0.5)]
    assert summarize_study(rows + grid)["regime_pays"] == {"disaggregated": 0.5}
