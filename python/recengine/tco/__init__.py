"""recengine.tco: DisaggRec's total cost of ownership, monolithic against disaggregated
clusters over years of model growth.

Inputs (:mod:`.inputs`): node types and the cost frame, every constant named, documented and
overridable. Provisioning (:mod:`.provision`): the cheapest monolithic and disaggregated
cluster for a demand from measured per-core rates, with binomial spares and stranded
resources. Growth (:mod:`.growth`): the three clusters provisioned year by year. Measurement
(:mod:`.measure`): the per-core rates from this machine's kernel, models and NMP emulator.
The sweep (:mod:`.sweep`): a fleet of models over the years, the headline figures, the
sensitivity to each input, the break-even RPC cost and the regimes where disaggregation
pays. Needs scipy (``pip install "recengine[hercules]"``) for the spares.

Example::

    >>> from recengine.tco import Capacity, Demand, Growth, project
    >>> rows = project(Demand("rmc1", 1e5, 400, 160 * 640), Capacity(30, 60, 2e7), Growth())
    >>> sorted({r["architecture"] for r in rows})
    ['disaggregated', 'disaggregated_nmp', 'monolithic']
"""

from .growth import ARCHITECTURES, Growth, grown, project
from .inputs import NODE_TYPES, CostInputs, NodeType
from .measure import Measured, lookup_rate, measure_model
from .provision import (
    Capacity,
    Cluster,
    Demand,
    InfeasibleError,
    annual_cost,
    disaggregated,
    monolithic,
    spares,
)
from .sweep import FACTORS, Fleet, break_even_rpc_s, fleet_rows, headlines, regimes, sensitivity

__all__ = ["ARCHITECTURES", "FACTORS", "NODE_TYPES", "Capacity", "Cluster", "CostInputs",
           "Demand", "Fleet", "Growth", "InfeasibleError", "Measured", "NodeType", "annual_cost",
           "break_even_rpc_s", "disaggregated", "fleet_rows", "grown", "headlines",
           "lookup_rate", "measure_model", "monolithic", "project", "regimes", "sensitivity",
           "spares"]
