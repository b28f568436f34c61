"""``recengine disagg``: one model served monolithic and disaggregated on Ray at equal cores,
then with a node killed mid-stream.

For each architecture the study deploys the model (:class:`~.deploy.Deployment`) on
``cores`` node threads in all: monolithic, ``cores`` single-thread nodes that each hold the
whole model; disaggregated, ``compute_nodes`` compute nodes and the rest memory nodes
(tables placed by the sharding planner's ``strategy``). It searches the highest Poisson rate
whose p95 latency meets the model's DeepRecInfra target with nothing shed or failed
(:func:`recengine.sched.max_qps`), and reports p50/p99 at that rate and the bytes each query
moves between compute and memory nodes (``kind: "deployment"``, ``failure: null``).

Then, at ``failure_load`` of that rate, it kills one node's actor a third into a run of
``failure_span_s`` seconds (a memory node and a compute node for the disaggregated
deployment, a node for the monolithic one) and reports every query's fate (served, of them
sent again, shed, failed: ``lost_queries`` = shed + failed), how long the node took to
answer again, and the capacity lost while it was down: one less the served rate over the
offered rate in that time (``failure: "memory node 0"`` ...).

Example::

    >>> rows = list(iter_study(Config(model="ncf", queries=60, failures=False)))  # doctest: +SKIP
    >>> sorted({r["architecture"] for r in rows})  # doctest: +SKIP
    ['disaggregated', 'monolithic']
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..models import TARGETS_MS
from ..sched import max_qps
from ..shapes import resolve_model
from ..shard.plan import STRATEGIES
from ..workload import QuerySizes, Workload
from .deploy import Deployment, DeployResult
from .nodes import ARCHITECTURES

__all__ = ["Config", "config_dict", "iter_study", "plot_study", "summarize_study"]


@dataclass
class Config:
    """What the study deploys and measures.

    Args:
        model: a DeepRecInfra model.
        scale: the model's table row factor.
        cores: node threads of each deployment in all (default: this machine's cores).
        compute_nodes: the disaggregated deployment's compute nodes (default: half the
            cores, at least one; the rest are memory nodes, at least one).
        replicas: actors per memory node.
        strategy: the sharding planner's strategy for the memory nodes.
        architectures: which to deploy.
        sizes: query sizes (default: DeepRecInfra's lognormal).
        queries: queries per run at least.
        target_scale: multiplies the model's p95 target.
        failures: also run the failure runs.
        failure_load: the failure runs' rate, a share of the architecture's max QPS.
        failure_span_s: seconds of queries in a failure run.
        timeout_s: a query's deadline.
        seed: of weights and workload.
    """

    model: str = "rmc1"
    scale: float = 0.01
    cores: int = 0
    compute_nodes: int = 0
    replicas: int = 1
    strategy: str = "load"
    architectures: Sequence[str] = ARCHITECTURES
    sizes: QuerySizes = field(default_factory=QuerySizes.lognormal)
    queries: int = 300
    target_scale: float = 1.0
    failures: bool = True
    failure_load: float = 0.6
    failure_span_s: float = 15.0
    timeout_s: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)
        self.cores = self.cores or os.cpu_count() or 1
        if self.cores < 2 and "disaggregated" in self.architectures:
            raise ValueError("a disaggregated deployment needs 2 cores at least (a compute "
                             "node and a memory node)")
        self.compute_nodes = self.compute_nodes or max(self.cores // 2, 1)
        if not 1 <= self.compute_nodes < max(self.cores, 2):
            raise ValueError(f"compute_nodes must leave a core for a memory node: 1 to "
                             f"{self.cores - 1}, got {self.compute_nodes}")
        for a in self.architectures:
            if a not in ARCHITECTURES:
                raise ValueError(f"unknown architecture {a!r}; expected some of "
                                 f"{', '.join(ARCHITECTURES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}")
        if not 0 < self.failure_load <= 1:
            raise ValueError(f"failure_load must be in (0, 1], got {self.failure_load}")
        if self.queries < 10:
            raise ValueError(f"a run needs at least 10 queries, got {self.queries}")

    @property
    def target_ms(self) -> float:
        return TARGETS_MS[self.model] * self.target_scale


def config_dict(config: Config) -> dict[str, Any]:
    d = asdict(config)
    d["sizes"] = config.sizes.describe()
    return d


def _deployment(config: Config, architecture: str) -> Deployment:
    if architecture == "monolithic":
        counts = dict(compute_nodes=config.cores, memory_nodes=1)
    else:
        counts = dict(compute_nodes=config.compute_nodes,
                      memory_nodes=config.cores - config.compute_nodes)
    return Deployment(config.model, scale=config.scale, seed=config.seed,
                      architecture=architecture, replicas=config.replicas,
                      strategy=config.strategy, timeout_s=config.timeout_s,
                      num_cpus=config.cores, **counts)


def _stream(config: Config, rate: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    arrivals, sizes = Workload(rate, config.sizes, "poisson", config.seed).queries(n)
    return arrivals, np.minimum(sizes, 4096)


def _hint(d: Deployment, config: Config) -> float:
    """About the rate the deployment saturates at: 16 queries offered at once, over the
    time it takes to serve them."""
    _, sizes = _stream(config, 1.0, 16)
    d.run(np.zeros(16), sizes)  # warm
    t0 = time.perf_counter()
    d.run(np.zeros(16), sizes)
    return max(16 / (time.perf_counter() - t0), 1.0)


def _max_qps(d: Deployment, config: Config) -> tuple[float, Optional[DeployResult]]:
    """The deployment's highest rate meeting the target, and that rate's run."""
    runs: dict[float, DeployResult] = {}

    def measure(rate: float) -> Any:
        # at least `queries` and 2 s of them, but no run past ~10 s (a search halving down
        # from a rate no run meets would otherwise take minutes)
        n = min(max(config.queries, int(rate * 2.0)), max(int(rate * 10.0), 20))
        runs[rate] = d.run(*_stream(config, rate, n))
        return runs[rate].as_run()

    qps, _ = max_qps(measure, config.target_ms, _hint(d, config), 0.1)
    return qps, runs.get(qps)


def iter_study(config: Config, status: Callable[[str], None] = lambda m: None,
               tick: Optional[Callable[[], None]] = None) -> Iterator[dict[str, Any]]:
    """The deployment rows, then (with ``failures``) the failure rows (see the module)."""
    for arch in config.architectures:
        status(f"{arch}: deploying {config.model} on {config.cores} cores")
        with _deployment(config, arch) as d:
            layout = (f"{len(d.compute)} compute" + (
                f" + {len(d.memory)} memory x{config.replicas}" if d.memory else ""))
            status(f"{arch} ({layout}): searching the max QPS at p95 <= "
                   f"{config.target_ms:g} ms")
            qps, best = _max_qps(d, config)
            yield _deploy_row(config, arch, layout, qps, best)
            if tick:
                tick()
            if not config.failures or qps <= 0:
                continue
            kinds = ["memory", "compute"] if arch == "disaggregated" else ["compute"]
            for kind in kinds:
                rate = config.failure_load * qps
                n = max(config.queries, int(rate * config.failure_span_s))
                status(f"{arch}: killing {kind} node 0 at {rate:,.0f} QPS")
                r = d.run(*_stream(config, rate, n), warmup=0.0,
                          kill_at=(n / rate / 3, kind, 0))
                yield _failure_row(config, arch, layout, kind, rate, r)
                if tick:
                    tick()


def _deploy_row(config: Config, arch: str, layout: str, qps: float,
                r: Optional[DeployResult]) -> dict[str, Any]:
    run = r.as_run() if r is not None else None
    return {"kind": "deployment", "model": config.model, "architecture": arch,
            "layout": layout, "cores": config.cores, "target_ms": config.target_ms,
            "qps": qps, "p50_ms": run.p50 if run else None,
            "p95_ms": run.p95 if run else None, "p99_ms": run.p99 if run else None,
            "bytes_per_query": r.bytes_per_query if r else None, "failure": None,
            "lost_queries": (r.shed + r.failed) if r else None}


def _failure_row(config: Config, arch: str, layout: str, kind: str, rate: float,
                 r: DeployResult) -> dict[str, Any]:
    (_, node, killed, back), = r.outages
    end = back if back is not None else float(np.nanmax(r.done_s))
    during = (r.arrival_s >= killed) & (r.arrival_s < end)
    offered = int(during.sum())
    served = int((during & (r.status == 0)).sum())
    run = r.as_run()
    return {"kind": "deployment", "model": config.model, "architecture": arch,
            "layout": layout, "cores": config.cores, "target_ms": config.target_ms,
            "qps": rate, "p50_ms": run.p50, "p95_ms": run.p95, "p99_ms": run.p99,
            "bytes_per_query": r.bytes_per_query, "failure": f"{kind} node {node}",
            "queries": int(r.status.size), "served": r.served, "retried": int(r.retried.sum()),
            "retried_served": r.retried_served, "shed": r.shed, "failed": r.failed,
            "lost_queries": r.shed + r.failed, "failovers": r.failovers,
            "outage_s": None if back is None else back - killed,
            "capacity_lost": 1 - served / offered if offered else None,
            "errors": sorted(set(r.errors.values()))[:3]}


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``qps`` by architecture, ``qps_ratio`` (disaggregated over monolithic, None without
    both), and over the failure runs ``lost_queries`` and whether every query is
    ``accounted`` for."""
    healthy = {r["architecture"]: r for r in rows if r["failure"] is None}
    out: dict[str, Any] = {"qps": {a: r["qps"] for a, r in healthy.items()}, "qps_ratio": None}
    if "monolithic" in healthy and "disaggregated" in healthy and healthy["monolithic"]["qps"]:
        out["qps_ratio"] = healthy["disaggregated"]["qps"] / healthy["monolithic"]["qps"]
    failures = [r for r in rows if r["failure"] is not None]
    out["lost_queries"] = sum(r["lost_queries"] for r in failures)
    out["accounted"] = all(r["served"] + r["shed"] + r["failed"] == r["queries"]
                           for r in failures)
    return out


def plot_study(rows: Sequence[dict[str, Any]], path: str, config: Config) -> None:
    """Max QPS per architecture, and the capacity each failure took while its node was
    down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    healthy = [r for r in rows if r["failure"] is None]
    failures = [r for r in rows if r["failure"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].bar([r["architecture"] for r in healthy], [r["qps"] for r in healthy],
                color=["#4c72b0", "#dd8452"][:len(healthy)])
    axes[0].set_ylabel(f"QPS at p95 <= {config.target_ms:g} ms")
    axes[0].set_title(f"{config.model} on {config.cores} cores")
    labels = [f"{r['architecture'][:5]}.\n{r['failure']}" for r in failures]
    axes[1].bar(labels, [100 * (r["capacity_lost"] or 0) for r in failures], color="#c44e52")
    axes[1].set_ylabel("capacity lost while down (%)")
    axes[1].set_title("a node killed mid-stream")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
