"""Model growth over the years, and the three clusters provisioned for each year's demand.

Each year multiplies the tables by ``1 + table_rate``, the dense work per query by
``1 + compute_rate`` and the peak load by ``1 + load_rate`` (all inputs: set them to your
fleet's). :func:`project` provisions the cheapest monolithic, disaggregated and
disaggregated + NMP cluster (:mod:`.provision`) for every year and reports each one's annual
cost, its ratio to the monolithic cluster's that year and to the monolithic cluster's of the
first year, and its stranded share.

Example::

    >>> from recengine.tco import Capacity, Demand
    >>> d = Demand("rmc1", qps=1e5, table_gb=400, lookups_per_query=160 * 640)
    >>> c = Capacity(30, 60, 2e7, sparse_share=0.6, nmp_speedup=2.0)
    >>> rows = project(d, c, Growth(table_rate=1.0), years=3)
    >>> [r["year"] for r in rows if r["architecture"] == "monolithic"]
    [0, 1, 2, 3]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from .inputs import NODE_TYPES, CostInputs, NodeType
from .provision import Capacity, Cluster, Demand, disaggregated, monolithic

__all__ = ["ARCHITECTURES", "Growth", "grown", "project"]

#: The clusters the study provisions.
ARCHITECTURES: tuple[str, ...] = ("monolithic", "disaggregated", "disaggregated_nmp")


@dataclass(frozen=True)
class Growth:
    """Yearly growth rates (0.5: +50% a year) of the tables, the dense work per query and the
    peak load."""

    table_rate: float = 1.0
    compute_rate: float = 0.5
    load_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("table_rate", "compute_rate", "load_rate"):
            if not getattr(self, name) > -1:
                raise ValueError(f"{name} must be > -1, got {getattr(self, name)}")


def grown(demand: Demand, growth: Growth, year: int) -> Demand:
    """``demand`` after ``year`` years of ``growth``. The lookups a query makes, and so the
    bytes it moves between compute and memory nodes, stay as they were: the model's pooling
    factors fix them."""
    return replace(demand, table_gb=demand.table_gb * (1 + growth.table_rate) ** year,
                   compute_scale=demand.compute_scale * (1 + growth.compute_rate) ** year,
                   qps=demand.qps * (1 + growth.load_rate) ** year)


def _clusters(d: Demand, capacity: Capacity, costs: CostInputs,
              nodes: Mapping[str, NodeType]) -> dict[str, Cluster]:
    return {"monolithic": monolithic(d, capacity, costs, nodes["monolithic"]),
            "disaggregated": disaggregated(d, capacity, costs, nodes["compute"],
                                           nodes["memory"]),
            "disaggregated_nmp": disaggregated(d, capacity, costs, nodes["compute"],
                                               nodes["memory-nmp"], nmp=True)}


def project(demand: Demand, capacity: Capacity, growth: Optional[Growth] = None,
            years: int = 3, costs: Optional[CostInputs] = None,
            nodes: Optional[Mapping[str, NodeType]] = None) -> list[dict[str, Any]]:
    """One row per year (0 to ``years``) and architecture (its node types from ``nodes``,
    keyed as :data:`~.inputs.NODE_TYPES`, which fills in any left out): ``tco`` ($ a year),
    ``tco_ratio_vs_monolithic`` (that year), ``tco_vs_first_monolithic``,
    ``stranded_fraction`` (of ``capex_usd``, the needed nodes' purchase, ``stranded_usd``
    pays for idle cores or DRAM), the node counts and the cost items."""
    growth, costs = growth or Growth(), costs or CostInputs()
    nodes = {**NODE_TYPES, **(nodes or {})}
    if nodes["memory-nmp"].nmp is False:
        raise ValueError("nodes['memory-nmp'] must be an NMP node (nmp=True)")
    if years < 0:
        raise ValueError(f"years must be >= 0, got {years}")
    rows: list[dict[str, Any]] = []
    first: Optional[float] = None
    for year in range(years + 1):
        d = grown(demand, growth, year)
        clusters = _clusters(d, capacity, costs, nodes)
        mono = clusters["monolithic"].annual_usd
        first = mono if first is None else first
        for arch, c in clusters.items():
            rows.append({"kind": "tco", "model": d.model, "year": year, "architecture": arch,
                         "tco": c.annual_usd, "tco_ratio_vs_monolithic": c.annual_usd / mono,
                         "tco_vs_first_monolithic": c.annual_usd / first,
                         "stranded_fraction": c.stranded_fraction,
                         "capex_usd": c.capex_usd, "stranded_usd": c.stranded_usd,
                         "nodes": c.count, "spares": dict(c.spare),
                         "cost": dict(c.cost), "table_gb": d.table_gb,
                         "compute_scale": d.compute_scale, "qps": d.qps})
    return rows
