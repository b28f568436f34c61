"""The cheapest monolithic and disaggregated clusters for a demand, their spares, annual cost
and stranded resources.

**Monolithic.** A server holds a copy of the model; where the tables do not fit its usable
DRAM, a group of ``ceil(tables / usable DRAM)`` servers holds one copy between them (sharded,
as the scale-out inference study serves them), and as many servers as the NIC bandwidth the
queries' own bytes take. A server serves ``cores x`` the measured
whole-model rate per core, slowed where the dense part grew (``Capacity.sparse_share`` of a
query's time is lookups, the rest dense work scaled by ``Demand.compute_scale``); there are
as many groups as the peak load needs. A failure takes a whole server.

**Disaggregated.** Compute nodes serve the dense part at the measured rate per core (over
``compute_scale``); memory nodes hold the tables in their usable DRAM and serve the lookups
(the core's measured rate per core, times RecNMP's speedup on NMP nodes): as many as the
larger of the two needs, and each side has NIC bandwidth for the bytes a query moves between
them (a compute node also receives the query itself). A failure takes one node of one kind.

**Spares** (:func:`spares`): each node kind of ``n`` gets the fewest ``s`` such that, with each
node down ``afr x repair_days / 365`` of the time independently, at most ``s`` of the
``n + s`` are down with probability ``availability`` (the binomial model).

**Annual cost** (:func:`annual_cost`): purchase over ``years``, energy at the mean power
(idle plus ``utilization`` of the way to peak) x PUE, facility capital per peak watt over
``facility_years``, and a network port per node over ``years``.

**Stranded** (:attr:`Cluster.stranded_fraction`): the share of the cluster's purchase that
pays for cores or DRAM no query needs (spares excluded: they are needed for availability).

Example::

    >>> d = Demand("rmc1", qps=1e5, table_gb=400, lookups_per_query=160 * 640)
    >>> c = Capacity(monolithic_qps_per_core=30, compute_qps_per_core=60,
    ...              lookups_per_core_s=2e7, sparse_share=0.6)
    >>> mono, dis = monolithic(d, c), disaggregated(d, c)
    >>> dis.annual_usd < mono.annual_usd
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .inputs import NODE_TYPES, CostInputs, NodeType

__all__ = ["Capacity", "Cluster", "Demand", "InfeasibleError", "annual_cost", "disaggregated",
           "monolithic", "spares"]

#: The most spares :func:`spares` tries, over the nodes they back.
MAX_SPARE_SHARE = 10.0


class InfeasibleError(ValueError):
    """No cluster of the given node types meets the demand: more nodes of a type are needed
    than it has ``available``, or no number of spares reaches the availability target."""


@dataclass(frozen=True)
class Demand:
    """One model's serving need.

    Args:
        model: its name.
        qps: peak load, queries/s.
        table_gb: its embedding tables, GB.
        lookups_per_query: rows pooled per query (items x rows per item).
        compute_scale: dense work per query over the measured model's.
        bytes_per_query: bytes a query moves between compute and memory nodes.
        query_bytes: bytes of the query itself (its ids), which the node serving it (a
            monolithic server, a compute node) receives over its NIC in any architecture.
    """

    model: str
    qps: float
    table_gb: float
    lookups_per_query: float
    compute_scale: float = 1.0
    bytes_per_query: float = 0.0
    query_bytes: float = 0.0

    def __post_init__(self) -> None:
        for name in ("qps", "table_gb", "lookups_per_query", "compute_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{self.model}: {name} must be positive, got "
                                 f"{getattr(self, name)}")
        if not (self.bytes_per_query >= 0 and self.query_bytes >= 0):
            raise ValueError(f"{self.model}: bytes_per_query and query_bytes must be >= 0")


@dataclass(frozen=True)
class Capacity:
    """Measured rates per core (the study measures them; see its docs).

    Args:
        monolithic_qps_per_core: whole-model queries/s one core serves at the target.
        compute_qps_per_core: dense-part queries/s (RPCs included) a compute-node core
            serves at the target.
        lookups_per_core_s: rows/s one memory-node core pools.
        sparse_share: the share of a monolithic query's time in lookups.
        nmp_speedup: RecNMP's lookup rate over the host's on an NMP node.
    """

    monolithic_qps_per_core: float
    compute_qps_per_core: float
    lookups_per_core_s: float
    sparse_share: float = 0.5
    nmp_speedup: float = 1.0

    def __post_init__(self) -> None:
        for name in ("monolithic_qps_per_core", "compute_qps_per_core", "lookups_per_core_s",
                     "nmp_speedup"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.sparse_share <= 1:
            raise ValueError(f"sparse_share must be in [0, 1], got {self.sparse_share}")

    def monolithic_rate(self, compute_scale: float) -> float:
        """Queries/s a core serves with the dense part ``compute_scale`` times heavier."""
        s = self.sparse_share
        return self.monolithic_qps_per_core / (s + compute_scale * (1 - s))


@dataclass
class Cluster:
    """Nodes of each kind (``needed`` and ``spare``), and what they cost a year."""

    architecture: str
    nodes: dict[str, NodeType]
    needed: dict[str, int]
    spare: dict[str, int]
    cost: dict[str, float] = field(default_factory=dict)
    stranded_usd: float = 0.0
    capex_usd: float = 0.0

    @property
    def annual_usd(self) -> float:
        return sum(self.cost.values())

    @property
    def count(self) -> dict[str, int]:
        return {k: self.needed[k] + self.spare[k] for k in self.needed}

    @property
    def stranded_fraction(self) -> float:
        """The share of the needed nodes' purchase paying for idle cores or DRAM."""
        return self.stranded_usd / self.capex_usd if self.capex_usd else 0.0


def spares(n: int, unavailability: float, availability: float) -> int:
    """The fewest spares ``s`` with ``P[Binomial(n + s, unavailability) <= s] >=
    availability``.

    Raises:
        InfeasibleError: no spares up to :data:`MAX_SPARE_SHARE` x ``n`` (and 100) reach it.

    Example::

        >>> spares(100, 0.01, 0.999), spares(100, 0.0, 0.999)
        (5, 0)
    """
    from scipy.stats import binom  # type: ignore[import-untyped]

    if n < 0 or not 0 <= unavailability < 1 or not 0 < availability < 1:
        raise ValueError("n >= 0, unavailability in [0, 1) and availability in (0, 1)")
    if n == 0:
        return 0
    for s in range(int(MAX_SPARE_SHARE * n) + 101):
        if binom.cdf(s, n + s, unavailability) >= availability:
            return s
    raise InfeasibleError(f"no number of spares reaches availability {availability} for {n} "
                          f"nodes each down {unavailability:.1%} of the time")


def annual_cost(node: NodeType, count: int, costs: CostInputs) -> dict[str, float]:
    """What ``count`` nodes of ``node`` cost a year: ``capex``, ``energy``,
    ``infrastructure``, ``network`` ($)."""
    mean_w = node.idle_w + costs.utilization * (node.peak_w - node.idle_w)
    return {
        "capex": count * node.price_usd / costs.years,
        "energy": count * mean_w * 8760 / 1e3 * costs.pue * costs.electricity_usd_per_kwh,
        "infrastructure": count * node.peak_w * costs.infrastructure_usd_per_w
        / costs.facility_years,
        "network": count * costs.network_usd_per_node / costs.years,
    }


def _finish(cluster: Cluster, costs: CostInputs, idle_cores: dict[str, float],
            idle_dram: dict[str, float]) -> Cluster:
    for kind, node in cluster.nodes.items():
        n = cluster.needed[kind]
        cluster.spare[kind] = spares(n, node.unavailability, costs.availability)
        if node.available is not None and n + cluster.spare[kind] > node.available:
            raise InfeasibleError(
                f"the {cluster.architecture} cluster needs {n} {node.name} nodes and "
                f"{cluster.spare[kind]} spares, more than the {node.available} available")
        for item, usd in annual_cost(node, n + cluster.spare[kind], costs).items():
            cluster.cost[item] = cluster.cost.get(item, 0.0) + usd
        cluster.capex_usd += n * node.price_usd
        cluster.stranded_usd += (n * (node.price_usd - node.dram_usd) * idle_cores[kind]
                                 + n * node.dram_usd * idle_dram[kind])
    return cluster


def monolithic(demand: Demand, capacity: Capacity, costs: Optional[CostInputs] = None,
               node: Optional[NodeType] = None) -> Cluster:
    """The monolithic cluster for ``demand`` (see the module)."""
    costs = costs or CostInputs()
    node = (node or NODE_TYPES["monolithic"]).priced(costs)
    group = max(math.ceil(demand.table_gb / (node.dram_gb * node.usable_dram)), 1)
    per_core = capacity.monolithic_rate(demand.compute_scale)
    wire = demand.qps * demand.query_bytes * 8 / 1e9  # Gbit/s in
    groups = max(math.ceil(demand.qps / (group * node.cores * per_core)),
                 math.ceil(wire / (group * node.nic_gbps)), 1)
    n = groups * group
    busy_cores = demand.qps / per_core / (n * node.cores)
    used_dram = groups * demand.table_gb / (n * node.dram_gb)
    return _finish(Cluster("monolithic", {"monolithic": node}, {"monolithic": n},
                           {"monolithic": 0}), costs,
                   {"monolithic": 1 - busy_cores}, {"monolithic": 1 - used_dram})


def disaggregated(demand: Demand, capacity: Capacity, costs: Optional[CostInputs] = None,
                  compute: Optional[NodeType] = None, memory: Optional[NodeType] = None,
                  nmp: bool = False) -> Cluster:
    """The disaggregated cluster for ``demand`` (see the module); ``nmp`` uses the NMP memory
    node (``memory`` defaults to it then)."""
    costs = costs or CostInputs()
    compute = (compute or NODE_TYPES["compute"]).priced(costs)
    memory = (memory or NODE_TYPES["memory-nmp" if nmp else "memory"]).priced(costs)
    speedup = capacity.nmp_speedup if memory.nmp else 1.0
    per_core = capacity.compute_qps_per_core / demand.compute_scale
    wire = demand.qps * demand.bytes_per_query * 8 / 1e9  # Gbit/s each way
    # the query in, then its bytes to and from memory nodes, all counted one way (a bound)
    wire_in = wire + demand.qps * demand.query_bytes * 8 / 1e9
    nc = max(math.ceil(demand.qps / (compute.cores * per_core)),
             math.ceil(wire_in / compute.nic_gbps), 1)
    lookups = demand.qps * demand.lookups_per_query
    rate = memory.cores * capacity.lookups_per_core_s * speedup
    nm = max(math.ceil(demand.table_gb / (memory.dram_gb * memory.usable_dram)),
             math.ceil(lookups / rate), math.ceil(wire / memory.nic_gbps), 1)
    name = "disaggregated_nmp" if memory.nmp else "disaggregated"
    # A compute node's little DRAM holds the dense part and its runtime: counted as used.
    return _finish(Cluster(name, {"compute": compute, "memory": memory},
                           {"compute": nc, "memory": nm}, {"compute": 0, "memory": 0}), costs,
                   {"compute": 1 - demand.qps / per_core / (nc * compute.cores),
                    "memory": 1 - lookups / (nm * rate)},
                   {"compute": 0.0, "memory": 1 - demand.table_gb / (nm * memory.dram_gb)})
