"""recengine.sched: latency-bounded throughput and the DeepRecSched scheduler (DeepRecSys).

A :class:`Policy` says how a server runs a query (sub-request batch size, accelerator offload
threshold). :func:`deeprecsched` tunes it for the most queries/s whose p95 meets a target,
against :func:`static_baseline`, on any :class:`Backend`: the discrete-event
:class:`SimulatedServer` fed by :class:`LatencyCurve` profiles (any core count; by load,
:class:`CurvesByLoad`), or the real
server of :mod:`recengine.serving`.

Example::

    >>> from recengine.sched import LatencyCurve, SimulatedServer, deeprecsched, static_baseline
    >>> cpu = LatencyCurve((1, 16, 256, 1024), (0.4, 1.5, 18.0, 70.0))
    >>> sim = SimulatedServer(cpu, cores=16, queries=500)
    >>> tuned = deeprecsched(sim, target_ms=25.0)
    >>> tuned.qps > static_baseline(sim, 25.0).qps
    True
"""

from .controller import ControllerSettings, RateController
from .latency import ACCELERATOR_BATCHES, PROFILE_BATCHES, Cpu, CurvesByLoad, LatencyCurve, profile
from .result import Policy, RunResult
from .search import (
    BATCH_SIZES,
    STATIC,
    THRESHOLDS,
    Backend,
    Tuned,
    controlled_qps,
    deeprecsched,
    max_qps,
    static_baseline,
)
from .simulate import DeviceStage, SimulatedServer, simulate, simulate_controlled
from .stream import QueryStream

__all__ = [
    "ACCELERATOR_BATCHES",
    "BATCH_SIZES",
    "PROFILE_BATCHES",
    "STATIC",
    "THRESHOLDS",
    "Backend",
    "ControllerSettings",
    "Cpu",
    "CurvesByLoad",
    "DeviceStage",
    "LatencyCurve",
    "Policy",
    "QueryStream",
    "RateController",
    "RunResult",
    "SimulatedServer",
    "Tuned",
    "controlled_qps",
    "deeprecsched",
    "max_qps",
    "profile",
    "simulate",
    "simulate_controlled",
    "static_baseline",
]
