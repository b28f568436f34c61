"""The TCO study's inputs: node types and the cost frame, every one a named, documented,
overridable value with its unit.

The frame follows the public total-cost-of-ownership models for data centres (Koomey et al.,
Uptime Institute, "A Simple Model for Determining True Total Cost of Ownership for Data
Centers", 2007; Patel and Shah, HP Labs HPL-2005-107, "Cost Model for Planning, Development
and Operation of a Data Center"): a node's purchase amortised over its service life, its
energy at the facility's PUE, the facility's capital cost per watt of IT load amortised over
the facility's life, and the network port each node takes. The default prices and powers
are round figures for 2022-era two-socket servers and DDR4 (a board and CPUs, plus DRAM by
the gigabyte), chosen by us as a starting point, not taken from DisaggRec (whose prices are
not public): change them to yours.

Example::

    >>> n = NODE_TYPES["memory"]
    >>> n.price_usd == n.base_usd + n.dram_gb * CostInputs().dram_usd_per_gb
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

__all__ = ["NODE_TYPES", "CostInputs", "NodeType"]


@dataclass(frozen=True)
class CostInputs:
    """The cost frame.

    Args:
        years: years a node's purchase is amortised over (its service life).
        electricity_usd_per_kwh: the price of energy, $/kWh.
        pue: power usage effectiveness (facility power over IT power; Uptime's surveys put
            typical facilities near 1.5).
        infrastructure_usd_per_w: the facility's capital cost (power and cooling plant,
            building) per watt of provisioned IT peak power, $/W (Koomey et al. build theirs
            from $/kW of critical load).
        facility_years: years the facility's capital cost is amortised over.
        network_usd_per_node: a node's NIC and switch port, $.
        dram_usd_per_gb: DRAM's price, $/GB (part of every node's price).
        utilization: a node's mean power as a share of the way from idle to peak.
        availability: the probability every provisioned need is met with the nodes up
            (spares are added per node type until it is).
    """

    years: float = 3.0
    electricity_usd_per_kwh: float = 0.07
    pue: float = 1.5
    infrastructure_usd_per_w: float = 10.0
    facility_years: float = 15.0
    network_usd_per_node: float = 1_000.0
    dram_usd_per_gb: float = 4.0
    utilization: float = 0.6
    availability: float = 0.999

    def __post_init__(self) -> None:
        for name in ("years", "electricity_usd_per_kwh", "pue", "facility_years"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("infrastructure_usd_per_w", "network_usd_per_node", "dram_usd_per_gb"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.utilization <= 1:
            raise ValueError(f"utilization must be in [0, 1], got {self.utilization}")
        if not 0 < self.availability < 1:
            raise ValueError(f"availability must be in (0, 1), got {self.availability}")
        if self.pue < 1:
            raise ValueError(f"pue must be >= 1, got {self.pue}")

    def with_(self, **changes: Any) -> CostInputs:
        return replace(self, **changes)


@dataclass(frozen=True)
class NodeType:
    """A kind of node.

    Args:
        name: its name.
        cores: CPU cores.
        dram_gb: DRAM, GB.
        base_usd: its price without DRAM (board, CPUs, storage, chassis), $.
        idle_w, peak_w: its power idle and at full load, W.
        nmp: whether its DIMMs are near-memory processing (RecNMP) DIMMs.
        nmp_usd_per_gb: what NMP DIMMs cost over plain DRAM, $/GB.
        nic_gbps: its network bandwidth, Gbit/s.
        afr: annual failure rate (failures per node-year).
        repair_days: days a failed node is down.
        usable_dram: the share of DRAM the tables (or a model copy) may take.
        available: the most nodes of this type a cluster may hold, spares included (rack
            space, a purchase limit; None: no limit). A cluster that needs more is
            infeasible (:class:`~.provision.InfeasibleError`).
        dram_usd_per_gb: DRAM's price, $/GB, for :attr:`price_usd`.
    """

    name: str
    cores: int
    dram_gb: float
    base_usd: float
    idle_w: float
    peak_w: float
    nmp: bool = False
    nmp_usd_per_gb: float = 0.0
    nic_gbps: float = 25.0
    afr: float = 0.05
    repair_days: float = 3.0
    usable_dram: float = 0.8
    available: Optional[int] = None
    dram_usd_per_gb: float = field(default=CostInputs.dram_usd_per_gb, repr=False)

    def __post_init__(self) -> None:
        if self.cores < 1 or not self.dram_gb > 0:
            raise ValueError(f"node {self.name!r} needs cores >= 1 and dram_gb > 0")
        if self.base_usd < 0 or self.idle_w < 0 or self.peak_w < self.idle_w:
            raise ValueError(f"node {self.name!r}: prices >= 0 and 0 <= idle_w <= peak_w")
        if not 0 <= self.afr < 365 / max(self.repair_days, 1e-9) or self.repair_days < 0:
            raise ValueError(f"node {self.name!r}: afr and repair_days must leave it up "
                             f"some of the time")
        if not 0 < self.usable_dram <= 1 or not self.nic_gbps > 0:
            raise ValueError(f"node {self.name!r}: usable_dram in (0, 1], nic_gbps > 0")
        if self.available is not None and self.available < 1:
            raise ValueError(f"node {self.name!r}: available must be >= 1 or None")

    @property
    def price_usd(self) -> float:
        """Purchase price: base plus DRAM (plus the NMP premium)."""
        return self.base_usd + self.dram_gb * (self.dram_usd_per_gb + self.nmp_usd_per_gb)

    @property
    def dram_usd(self) -> float:
        """The share of the price that is memory."""
        return self.dram_gb * (self.dram_usd_per_gb + self.nmp_usd_per_gb)

    @property
    def unavailability(self) -> float:
        """The share of time a node is down: failures a year x days each over 365."""
        return self.afr * self.repair_days / 365.0

    def priced(self, costs: CostInputs) -> NodeType:
        """This node with ``costs``' DRAM price."""
        return replace(self, dram_usd_per_gb=costs.dram_usd_per_gb)


#: The default node types: a monolithic server (CPU and memory in one fixed ratio), a compute
#: node (the same CPUs, little memory), a memory node (few cores, much DRAM) and one with NMP
#: DIMMs (RecNMP). Round 2022-era figures; override any field.
NODE_TYPES: dict[str, NodeType] = {
    "monolithic": NodeType("monolithic", cores=64, dram_gb=512, base_usd=9_000,
                           idle_w=180, peak_w=550),
    "compute": NodeType("compute", cores=64, dram_gb=64, base_usd=9_000, idle_w=160,
                        peak_w=500),
    "memory": NodeType("memory", cores=16, dram_gb=1024, base_usd=4_000, idle_w=110,
                       peak_w=300),
    "memory-nmp": NodeType("memory-nmp", cores=16, dram_gb=1024, base_usd=4_000,
                           idle_w=120, peak_w=340, nmp=True, nmp_usd_per_gb=1.0),
}
