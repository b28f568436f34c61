"""recengine.disagg: disaggregated serving (DisaggRec) on Ray.

A model is served by **compute nodes** running its dense part and **memory nodes** holding its
embedding tables (placed by the sharding planner), scaled independently and linked by Ray
calls, or, for comparison, by monolithic nodes that each hold the whole model, on the same
code (:class:`Deployment`). The front end accounts for every query (served, retried, shed,
failed), also while a node is killed and Ray brings it back. Needs
``pip install "recengine[shard]"``.

Example::

    >>> from recengine.disagg import Deployment
    >>> with Deployment("rmc1", architecture="disaggregated",
    ...                 memory_nodes=2) as d:  # doctest: +SKIP
    ...     r = d.run(np.arange(100) * 0.01, np.full(100, 64))
    ...     (r.served, r.shed, r.failed), r.bytes_per_query > 0
    ((100, 0, 0), True)
"""

from .deploy import Deployment, DeployResult
from .nodes import ARCHITECTURES, ComputeNode, MemoryNode, MemoryNodeUnavailableError
from .placement import MemoryPlan

__all__ = ["ARCHITECTURES", "ComputeNode", "DeployResult", "Deployment", "MemoryNode",
           "MemoryNodeUnavailableError", "MemoryPlan"]
