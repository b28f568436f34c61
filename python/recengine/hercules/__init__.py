"""recengine.hercules: heterogeneity-aware scheduling search and cluster provisioning
(Hercules, HPCA 2022).

Built so far: the first stage's search (:mod:`recengine.hercules.search`: steepest ascent with
step doubling over a discrete configuration lattice, against the exhaustive grid) and the
provisioning stage (:mod:`recengine.hercules.provision`): given what one server of each type
serves of each model at its latency target, give each model servers of each type in every slot
of a diurnal day, with the least servers or peak power, against a greedy and a
heterogeneity-oblivious baseline.

Example::

    >>> from recengine.hercules import ServerType, diurnal, provision
    >>> plan = provision({"rmc1": diurnal(900.0)}, {("rmc1", "cpu"): 200.0},
    ...                  [ServerType("cpu", idle_w=100, peak_w=300)])
    >>> plan.peak_servers
    5
"""

from .provision import OBJECTIVES, Plan, ServerType, diurnal, greedy, oblivious, provision
from .search import SearchResult, Space, gradient_search, grid_search

__all__ = ["OBJECTIVES", "Plan", "SearchResult", "ServerType", "Space", "diurnal",
           "gradient_search", "greedy", "grid_search", "oblivious", "provision"]
