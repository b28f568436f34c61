"""recengine.tco: hand-checked cluster sizes and costs, binomial spares, growth, and clear
errors for bad or infeasible inputs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.tco import (
    NODE_TYPES,
    Capacity,
    CostInputs,
    Demand,
    Growth,
    NodeType,
    annual_cost,
    disaggregated,
    grown,
    monolithic,
    project,
    spares,
)

# Round numbers so every figure can be checked by hand.
COSTS = CostInputs(years=4, electricity_usd_per_kwh=0.1, pue=2.0, infrastructure_usd_per_w=5,
                   facility_years=10, network_usd_per_node=400, dram_usd_per_gb=2,
                   utilization=0.5, availability=0.99)
MONO = NodeType("mono", cores=10, dram_gb=100, base_usd=1000, idle_w=100, peak_w=300,
                afr=0.0)
COMP = NodeType("comp", cores=10, dram_gb=10, base_usd=1000, idle_w=100, peak_w=300, afr=0.0)
MEM = NodeType("mem", cores=2, dram_gb=500, base_usd=500, idle_w=50, peak_w=150, afr=0.0,
               usable_dram=1.0)
CAP = Capacity(monolithic_qps_per_core=10, compute_qps_per_core=20, lookups_per_core_s=1000,
               sparse_share=0.5)


def test_annual_cost_by_hand() -> None:
    c = annual_cost(MONO.priced(COSTS), 3, COSTS)
    assert c["capex"] == pytest.approx(3 * (1000 + 100 * 2) / 4)  # $900
    # mean power 200 W x 8760 h = 1752 kWh, x PUE 2 x $0.1
    assert c["energy"] == pytest.approx(3 * 1752 * 2 * 0.1)
    assert c["infrastructure"] == pytest.approx(3 * 300 * 5 / 10)
    assert c["network"] == pytest.approx(3 * 400 / 4)


def test_monolithic_by_hand() -> None:
    # 250 GB of tables in 80 GB usable: groups of 4 servers; a core serves 10 QPS at
    # compute_scale 1, so a group 400 QPS; 1000 QPS need 3 groups = 12 servers.
    d = Demand("m", qps=1000, table_gb=250, lookups_per_query=10)
    c = monolithic(d, CAP, COSTS, MONO)
    assert c.needed == {"monolithic": 12} and c.spare == {"monolithic": 0}
    assert c.annual_usd == pytest.approx(sum(annual_cost(MONO.priced(COSTS), 12,
                                                         COSTS).values()))
    # idle: cores 1 - 1000/10/120; DRAM 1 - 3*250/1200
    idle_cores, idle_dram = 1 - 100 / 120, 1 - 750 / 1200
    want = 12 * (1000 * idle_cores + 200 * idle_dram) / (12 * 1200)
    assert c.stranded_fraction == pytest.approx(want)
    # The dense part twice as heavy: a core serves 10 / (0.5 + 2 * 0.5) QPS.
    heavy = monolithic(Demand("m", 1000, 250, 10, compute_scale=2.0), CAP, COSTS, MONO)
    assert heavy.needed["monolithic"] == 4 * math.ceil(1000 / (4 * 10 * 10 / 1.5))


def test_disaggregated_by_hand() -> None:
    # compute: 1000 QPS / (10 cores x 20) = 5 nodes; memory: 250 GB fits one 500 GB node,
    # but 1000 x 10 lookups/s over 2 x 1000 per node need 5.
    d = Demand("m", qps=1000, table_gb=250, lookups_per_query=10)
    c = disaggregated(d, CAP, COSTS, COMP, MEM)
    assert c.needed == {"compute": 5, "memory": 5}
    assert c.architecture == "disaggregated"
    # RecNMP twice as fast: 3 memory nodes.
    nmp_mem = NodeType("nmp", 2, 500, 500, 50, 150, nmp=True, afr=0.0, usable_dram=1.0)
    fast = disaggregated(d, Capacity(10, 20, 1000, nmp_speedup=2.0), COSTS, COMP, nmp_mem)
    assert fast.needed == {"compute": 5, "memory": 3}
    assert fast.architecture == "disaggregated_nmp"
    # 2 GB a query at 1000 QPS is 16,000 Gbit/s: 640 nodes of 25 Gbit/s each side.
    wide = disaggregated(Demand("m", 1000, 250, 10, bytes_per_query=2e9), CAP, COSTS, COMP, MEM)
    assert wide.needed == {"compute": 640, "memory": 640}


def test_spares_follow_the_binomial_model() -> None:
    from scipy.stats import binom

    assert spares(0, 0.5, 0.99) == 0 and spares(50, 0.0, 0.999) == 0
    for n, u, a in ((10, 0.01, 0.99), (100, 0.02, 0.999), (1000, 0.001, 0.9999)):
        s = spares(n, u, a)
        assert binom.cdf(s, n + s, u) >= a
        assert s == 0 or binom.cdf(s - 1, n + s - 1, u) < a  # the fewest
    node = NodeType("x", 8, 64, 1000, 100, 200, afr=0.73, repair_days=5)  # 1% down
    c = monolithic(Demand("m", 8000, 10, 1), CAP, COSTS, node)
    assert c.spare["monolithic"] == spares(c.needed["monolithic"], 0.01, COSTS.availability)
    with pytest.raises(ValueError, match="no number of spares"):
        spares(10, 0.99, 0.999999)


@settings(max_examples=40, deadline=None)
@given(qps=st.floats(1, 1e6), gb=st.floats(0.1, 1e4), lookups=st.floats(1, 1e5),
       scale=st.floats(0.1, 10))
def test_clusters_meet_the_demand(qps: float, gb: float, lookups: float, scale: float) -> None:
    d = Demand("m", qps, gb, lookups, compute_scale=scale)
    m = monolithic(d, CAP)
    node = NODE_TYPES["monolithic"]
    group = math.ceil(gb / (node.dram_gb * node.usable_dram))
    assert m.needed["monolithic"] % group == 0
    assert m.needed["monolithic"] * node.cores * CAP.monolithic_rate(scale) >= qps
    dis = disaggregated(d, CAP)
    mem = NODE_TYPES["memory"]
    assert dis.needed["memory"] * mem.dram_gb * mem.usable_dram >= gb
    assert dis.needed["memory"] * mem.cores * CAP.lookups_per_core_s >= qps * lookups
    assert dis.needed["compute"] * NODE_TYPES["compute"].cores * CAP.compute_qps_per_core \
        >= qps * scale
    for c in (m, dis):
        assert 0 <= c.stranded_fraction < 1 and c.annual_usd > 0


def test_growth_and_projection() -> None:
    d = Demand("m", 1000, 250, 10)
    g = grown(d, Growth(table_rate=1.0, compute_rate=0.5, load_rate=0.1), 2)
    assert (g.table_gb, g.compute_scale, g.qps) == pytest.approx((1000, 2.25, 1210))
    rows = project(d, CAP, Growth(), years=2, costs=COSTS)
    assert [(r["year"], r["architecture"]) for r in rows[:3]] == [
        (0, "monolithic"), (0, "disaggregated"), (0, "disaggregated_nmp")]
    mono = {r["year"]: r["tco"] for r in rows if r["architecture"] == "monolithic"}
    for r in rows:
        assert r["tco_ratio_vs_monolithic"] == pytest.approx(r["tco"] / mono[r["year"]])
        assert r["tco_vs_first_monolithic"] == pytest.approx(r["tco"] / mono[0])
        assert r["kind"] == "tco"
    assert mono[2] >= mono[1] >= mono[0]  # tables and compute only grow


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="qps"):
        Demand("m", 0, 1, 1)
    with pytest.raises(ValueError, match="table_gb"):
        Demand("m", 1, -1, 1)
    with pytest.raises(ValueError, match="sparse_share"):
        Capacity(1, 1, 1, sparse_share=2)
    with pytest.raises(ValueError, match="lookups_per_core_s"):
        Capacity(1, 1, 0)
    with pytest.raises(ValueError, match="pue"):
        CostInputs(pue=0.5)
    with pytest.raises(ValueError, match="availability"):
        CostInputs(availability=1.0)
    with pytest.raises(ValueError, match="idle_w"):
        NodeType("x", 1, 1, 1, idle_w=300, peak_w=100)
    with pytest.raises(ValueError, match="table_rate"):
        Growth(table_rate=-1)
    with pytest.raises(ValueError, match="years"):
        project(Demand("m", 1, 1, 1), CAP, years=-1)
