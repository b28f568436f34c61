"""The TCO sweep: measured rates into capacities and demands, the fleet's totals, the headline
figures, the sensitivity of the saving to each input, the break-even RPC cost."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from recengine.tco import (
    FACTORS,
    Fleet,
    Growth,
    Measured,
    break_even_rpc_s,
    fleet_rows,
    headlines,
    lookup_rate,
    measure_model,
    regimes,
    sensitivity,
)
from recengine.tco.sweep import three_year_saving

pytest.importorskip("scipy")

RMC1 = Measured("rmc1", items=160, lookups_per_query=160 * 640, dense_s=1e-3,
                lookup_rate=2e7, nmp_speedup=5.0, bytes_per_query=5e5, table_gb=4.0,
                query_bytes=4e5)
NCF = Measured("ncf", items=160, lookups_per_query=640, dense_s=5e-4, lookup_rate=2e7,
               nmp_speedup=1.2, bytes_per_query=1e5, table_gb=0.1, query_bytes=3e3)


def test_capacity_and_demand_from_measured_rates_by_hand() -> None:
    c = RMC1.capacity(rpc_s=2e-3)
    sparse = 160 * 640 / 2e7  # 5.12 ms of a core
    assert c.monolithic_qps_per_core == pytest.approx(1 / (sparse + 1e-3))
    assert c.compute_qps_per_core == pytest.approx(1 / 3e-3)
    assert c.sparse_share == pytest.approx(sparse / (sparse + 1e-3))
    assert (c.lookups_per_core_s, c.nmp_speedup) == (2e7, 5.0)
    d = RMC1.demand(qps=1e4, table_multiplier=50)
    assert (d.qps, d.table_gb, d.lookups_per_query) == (1e4, 200.0, 160 * 640)
    assert (d.bytes_per_query, d.query_bytes, d.compute_scale) == (5e5, 4e5, 1.0)
    with pytest.raises(ValueError, match="rpc_s"):
        RMC1.capacity(-1.0)
    with pytest.raises(ValueError, match="table_multiplier"):
        RMC1.demand(1e4, 0)


def test_fleet_rows_total_the_models_each_year() -> None:
    fleet = Fleet(qps=2e4, table_multiplier=50, years=2)
    rows = fleet_rows([RMC1, NCF], rpc_s=1e-3, fleet=fleet)
    assert {r["kind"] for r in rows} == {"tco"}
    for year in range(3):
        for arch in ("monolithic", "disaggregated", "disaggregated_nmp"):
            parts = [r for r in rows if r["year"] == year and r["architecture"] == arch]
            total, = (r for r in parts if r["model"] == "fleet")
            models = [r for r in parts if r["model"] != "fleet"]
            assert len(models) == 2
            assert total["tco"] == pytest.approx(sum(r["tco"] for r in models))
            assert total["stranded_fraction"] == pytest.approx(
                sum(r["stranded_usd"] for r in models) / sum(r["capex_usd"] for r in models))
            assert 0 <= total["stranded_fraction"] < 1
            if arch == "monolithic":
                assert total["tco_ratio_vs_monolithic"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        fleet_rows([], 1e-3, fleet)
    with pytest.raises(ValueError, match="year"):
        Fleet(years=0)


def _rows(tco: dict[tuple[str, int, str], float]) -> list[dict]:
    out = []
    for (model, year, arch), usd in tco.items():
        mono = tco[(model, year, "monolithic")]
        out.append({"kind": "tco", "model": model, "year": year, "architecture": arch,
                    "tco": usd, "tco_ratio_vs_monolithic": usd / mono,
                    "stranded_fraction": 0.1 * (year + 1) if arch == "monolithic" else 0.0})
    return out


def test_headlines_and_the_three_year_saving_by_hand() -> None:
    tco = {}
    for model, mono in (("fleet", (10.0, 40.0)), ("a", (4.0, 32.0)), ("b", (6.0, 8.0))):
        for year, m in enumerate(mono):
            tco[(model, year, "monolithic")] = m
            tco[(model, year, "disaggregated")] = m * (0.5 if year else 1.5)
            tco[(model, year, "disaggregated_nmp")] = m * (0.4 if year else 0.9)
    rows = _rows(tco)
    # fleet: disaggregated 15 + 20 against monolithic 10 + 40
    assert three_year_saving(rows, "disaggregated") == pytest.approx(1 - 35 / 50)
    h = headlines(rows)
    assert h["monolithic_growth_x"] == pytest.approx(4.0)
    assert h["monolithic_growth_x_max"] == pytest.approx(8.0)
    assert h["monolithic_stranded_max"] == pytest.approx(0.2)
    assert h["disaggregated_saving_max"] == pytest.approx(0.5)
    assert h["disaggregated_nmp_saving_range"] == pytest.approx((0.1, 0.6))
    assert headlines([]) == {}


def test_sensitivity_moves_the_saving_the_way_each_input_must() -> None:
    fleet = Fleet(qps=2e4, table_multiplier=50)
    rows = sensitivity([RMC1, NCF], 2e-3, fleet)
    assert {r["input"] for r in rows} == set(FACTORS)
    by = {(r["input"], r["architecture"]): r for r in rows}
    for arch in ("disaggregated", "disaggregated_nmp"):
        rpc = by[("RPC cost per query", arch)]
        # dearer RPCs never make disaggregation cheaper
        assert rpc["saving_high"] <= rpc["baseline"] <= rpc["saving_low"]
        assert rpc["swing"] == pytest.approx(abs(rpc["saving_high"] - rpc["saving_low"]))
    # RecNMP's speedup only reaches the NMP cluster
    nmp = by[("RecNMP speedup", "disaggregated")]
    assert nmp["saving_low"] == nmp["saving_high"] == nmp["baseline"]
    with pytest.raises(ValueError, match="unknown inputs"):
        sensitivity([RMC1], 1e-3, fleet, factors=["moon phase"])
    with pytest.raises(ValueError, match="low"):
        sensitivity([RMC1], 1e-3, fleet, low=2.0, high=3.0)


def test_break_even_rpc_cost_is_where_the_saving_crosses_zero() -> None:
    fleet = Fleet(qps=5e3, table_multiplier=400, growth=Growth(table_rate=1.0))
    models = [replace(RMC1, bytes_per_query=1e4, query_bytes=1e4)]
    rpc = break_even_rpc_s(models, fleet, "disaggregated", tolerance=1e-7)
    assert rpc is not None and 0 < rpc < 1.0

    def saving(r: float) -> float:
        return three_year_saving(fleet_rows(models, r, fleet), "disaggregated")

    assert saving(rpc) >= 0 > saving(rpc + 1e-3)
    # a query that moves gigabytes never pays, whatever its RPCs cost
    heavy = [replace(RMC1, bytes_per_query=1e9)]
    assert break_even_rpc_s(heavy, Fleet(qps=2e4), "disaggregated") is None


def test_lookup_rate_and_a_measured_model() -> None:
    assert lookup_rate(16, kernel_mb=1, repeats=2) > 0
    with pytest.raises(ValueError, match="positive"):
        lookup_rate(0)
    rates: dict[int, float] = {}
    m = measure_model("ncf", items=8, kernel_mb=1, repeats=1, rates=rates)
    assert m.model == "ncf" and len(rates) == 1
    assert m.dense_s > 0 and m.lookup_rate == next(iter(rates.values()))
    assert m.nmp_speedup > 0 and m.table_gb > 0
    with pytest.raises(ValueError, match="item"):
        measure_model("ncf", items=0)


@pytest.mark.parametrize("model", ["ncf", "rmc1", "din"])
def test_bytes_per_query_are_what_the_deployment_sends(model: str) -> None:
    """The measured bytes a query moves match the memory plan's request and the pooled
    blocks that come back (the deployment's own count)."""
    from recengine.disagg.placement import MemoryPlan
    from recengine.models import build

    m = build(model, scale=0.001)
    batch = m.sample_batch(50, seed=1)
    work, _ = MemoryPlan.for_model(m, 2).requests(batch)
    sent = MemoryPlan.request_bytes(work)
    back = sum((len(offs) - 1) * m.tables[t].dim * 4
               for items in work.values() for t, _, _, offs, _, _ in items)
    measured = measure_model(model, items=50, scale=0.001, kernel_mb=1, repeats=1)
    assert measured.bytes_per_query == pytest.approx(sent + back, rel=0.02)
    assert measured.query_bytes == pytest.approx(
        sum(int(np.prod(x.shape)) for x in batch.sparse) * 4)


def test_settings_change_cost_inputs_and_node_types() -> None:
    f = Fleet().with_settings(["memory.nic_gbps=100", "costs.pue=1.2", "compute.cores=32"])
    assert f.nodes["memory"].nic_gbps == 100.0 and f.costs.pue == 1.2
    assert f.nodes["compute"].cores == 32 and isinstance(f.nodes["compute"].cores, int)
    assert f.nodes["memory-nmp"].nic_gbps == Fleet().nodes["memory-nmp"].nic_gbps
    for bad in ("memory.nic_gbps", "gpu.cores=2", "costs.nope=1", "memory.name=x",
                "memory.nmp=1", "costs.pue=fast"):
        with pytest.raises(ValueError, match="bad setting"):
            Fleet().with_settings([bad])
    with pytest.raises(ValueError, match="pue"):
        Fleet().with_settings(["costs.pue=0.5"])


def test_faster_nics_never_cost_more_and_node_types_reach_the_clusters() -> None:
    fleet = Fleet(qps=2e4, table_multiplier=50)
    slow = fleet_rows([RMC1], 1e-3, fleet)
    fast = fleet_rows([RMC1], 1e-3, fleet.with_settings(
        [f"{n}.nic_gbps=400" for n in ("monolithic", "compute", "memory", "memory-nmp")]))
    for a, b in zip(slow, fast):
        assert (a["year"], a["architecture"]) == (b["year"], b["architecture"])
        assert b["tco"] <= a["tco"]
    by = {(r["input"], r["architecture"]): r for r in sensitivity([RMC1], 1e-3, fleet)}
    premium = by[("NMP DIMM premium", "disaggregated")]  # plain memory nodes: untouched
    assert premium["saving_low"] == premium["saving_high"] == premium["baseline"]


def test_regimes_favour_memory_nodes_for_big_tables_at_light_load() -> None:
    fleet = Fleet()
    rows = regimes([RMC1, NCF], 1e-3, fleet, multipliers=(1, 3000), loads=(1e3, 1e5))
    assert len(rows) == 2 * 2 * 2 and {r["kind"] for r in rows} == {"regime"}
    saving = {(r["table_multiplier"], r["fleet_qps"]): r["saving"] for r in rows
              if r["architecture"] == "disaggregated"}
    # the same load: bigger tables favour disaggregation; the same tables: more load does not
    assert saving[(3000, 1e3)] > saving[(1, 1e3)]
    assert saving[(3000, 1e3)] > saving[(3000, 1e5)]
    one = fleet_rows([RMC1, NCF], 1e-3, replace(fleet, table_multiplier=3000, qps=1e3))
    assert saving[(3000, 1e3)] == pytest.approx(three_year_saving(one, "disaggregated"))
    with pytest.raises(ValueError, match="grid"):
        regimes([RMC1], 1e-3, fleet, loads=())


def test_a_node_type_cap_makes_provisioning_infeasible_clearly() -> None:
    from recengine.tco import InfeasibleError

    capped = Fleet(qps=2e4, table_multiplier=50).with_settings(["memory.available=1"])
    assert capped.nodes["memory"].available == 1
    with pytest.raises(InfeasibleError, match=r"memory nodes and \d+ spares, more than the 1"):
        fleet_rows([RMC1], 1e-3, capped)
    # the monolithic and NMP clusters do not use plain memory nodes: a cap on NMP nodes
    # instead leaves the baseline buildable where it fits, and the sweeps mark what is not
    roomy = Fleet(qps=1e3, table_multiplier=1).with_settings(["memory-nmp.available=3"])
    base = fleet_rows([NCF], 1e-3, roomy)
    assert base
    grid = regimes([NCF], 1e-3, roomy, multipliers=(1, 3000), loads=(1e3,))
    nmp = {r["table_multiplier"]: r["saving"] for r in grid
           if r["architecture"] == "disaggregated_nmp"}
    assert nmp[1.0] is not None and nmp[3000.0] is None  # 300 GB of tables: 1 node too few
    rows = sensitivity([NCF], 1e-3, roomy, factors=["table size"], low=0.5, high=5000.0)
    side = next(r for r in rows if r["architecture"] == "disaggregated_nmp")
    assert side["saving_low"] is not None and side["saving_high"] is None
    assert side["swing"] is None
    with pytest.raises(ValueError, match="available"):
        Fleet().with_settings(["memory.available=0"])
