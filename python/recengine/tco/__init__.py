"""recengine.tco: DisaggRec's total cost of ownership, monolithic against disaggregated
clusters over years of model growth.

Inputs (:mod:`.inputs`): node types and the cost frame, every constant named, documented and
overridable. Provisioning (:mod:`.provision`): the cheapest monolithic and disaggregated
cluster for a demand from measured per-core rates, with binomial spares and stranded
resources. Growth (:mod:`.growth`): the three clusters provisioned year by year. Needs scipy
(``pip install "recengine[hercules]"``) for the spares.

Example::

    >>> from recengine.tco import Capacity, Demand, Growth, project
    >>> rows = project(Demand("rmc1", 1e5, 400, 160 * 640), Capacity(30, 60, 2e7), Growth())
    >>> sorted({r["architecture"] for r in rows})
    ['disaggregated', 'disaggregated_nmp', 'monolithic']
"""

from .growth import ARCHITECTURES, Growth, grown, project
from .inputs import NODE_TYPES, CostInputs, NodeType
from .provision import Capacity, Cluster, Demand, annual_cost, disaggregated, monolithic, spares

__all__ = ["ARCHITECTURES", "NODE_TYPES", "Capacity", "Cluster", "CostInputs", "Demand",
           "Growth", "NodeType", "annual_cost", "disaggregated", "grown", "monolithic",
           "project", "spares"]
