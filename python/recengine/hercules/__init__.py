"""recengine.hercules: heterogeneity-aware scheduling search and cluster provisioning
(Hercules, HPCA 2022).

Stage 1 searches each (model, server type)'s scheduling space (:mod:`.schedule`: co-located
instances, threads each, batch size, offload threshold, sparse placement, threads or
processes) on the serving simulator fed by CPU profiles that carry co-location's contention
(:mod:`.profile`), with a gradient search over the lattice (:mod:`.search`) checked against
the exhaustive grid, DeepRecSched and the naive schedule (:mod:`.evaluate`). Stage 2
(:mod:`.provision`) gives each model servers of each type in every slot of a diurnal day, with
the least servers or peak power, against a greedy and a heterogeneity-oblivious baseline.
``recengine hercules`` runs both (:mod:`.study`).

Example::

    >>> from recengine.hercules import ServerType, diurnal, provision
    >>> plan = provision({"rmc1": diurnal(900.0)}, {("rmc1", "cpu"): 200.0},
    ...                  [ServerType("cpu", idle_w=100, peak_w=300)])
    >>> plan.peak_servers
    5
"""

from .evaluate import Comparison, Evaluator, Machine, compare
from .profile import BATCHES, CpuProfile, counts, profile_cpu, sparse_shares
from .provision import OBJECTIVES, Plan, ServerType, diurnal, greedy, oblivious, provision
from .schedule import DENSE, SHARING, SPARSE, Footprint, Schedule, footprint, naive
from .search import SearchResult, Space, gradient_search, grid_search

__all__ = ["BATCHES", "DENSE", "OBJECTIVES", "SHARING", "SPARSE", "Comparison", "CpuProfile",
           "Evaluator", "Footprint", "Machine", "Plan", "Schedule", "SearchResult",
           "ServerType", "Space", "compare", "counts", "diurnal", "footprint",
           "gradient_search", "greedy", "grid_search", "naive", "oblivious", "profile_cpu",
           "provision", "sparse_shares"]
