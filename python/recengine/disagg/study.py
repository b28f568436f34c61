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

Then, with ``tco``, DisaggRec's cost study at datacenter scale (:mod:`recengine.tco`), fed by
what was measured: each of ``tco_models``' rates per core on this machine
(:func:`recengine.tco.measure_model`: the dense part, the core's lookup kernel out of cache,
RecNMP's speedup from the NMP emulator's fast mode, the bytes a query moves) and the RPC cost
per query from the deployments above (the core time a disaggregated query took over a
monolithic one at equal cores, ``cores / qps`` each; ``rpc_ms`` overrides it), one row each
(``kind: "capacity"``); the fleet (every model at ``fleet_qps``, tables ``table_multiplier``
times full scale, grown for ``years``) provisioned monolithic, disaggregated and disaggregated
with NMP memory nodes each year (``kind: "tco"``, per model and ``model: "fleet"``); each input
halved and doubled (``kind: "sensitivity"``); the saving over a grid of table sizes and loads
(``kind: "regime"``); and the RPC cost at which each disaggregated cluster breaks even
(``kind: "break_even"``).

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
from ..shapes import model_names, resolve_model
from ..shard.plan import STRATEGIES
from ..tco import (
    Fleet,
    Growth,
    Measured,
    break_even_rpc_s,
    fleet_rows,
    headlines,
    measure_model,
    regimes,
    sensitivity,
)
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
        tco: also run the TCO sweep.
        tco_models: the models of the TCO sweep's fleet.
        fleet_qps: each model's peak load in the fleet's first year, queries/s.
        table_multiplier: the fleet's tables over DeepRecInfra's full scale.
        years: years of growth.
        table_growth, compute_growth, load_growth: yearly growth of the tables, the dense
            work per query and the load (1.0: doubling).
        rpc_ms: the RPC cost per query in ms of a compute-node core (default: measured from
            the deployments).
        kernel_mb: the table the lookup rate is measured on, MiB.
        settings: cost inputs and node types changed from their defaults
            (:meth:`recengine.tco.Fleet.with_settings`: ``"costs.pue=1.2"``,
            ``"memory.nic_gbps=100"`` ...).
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
    tco: bool = True
    tco_models: Sequence[str] = field(default_factory=model_names)
    fleet_qps: float = 20_000.0
    table_multiplier: float = 100.0
    years: int = 3
    table_growth: float = 1.0
    compute_growth: float = 0.5
    load_growth: float = 0.0
    rpc_ms: Optional[float] = None
    kernel_mb: float = 256.0
    settings: Sequence[str] = ()

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
        self.tco_models = [resolve_model(m) for m in self.tco_models]
        if self.tco:
            if not self.tco_models:
                raise ValueError("the TCO sweep needs at least one model")
            if self.rpc_ms is None and set(self.architectures) != set(ARCHITECTURES):
                raise ValueError("the TCO sweep measures the RPC cost on the monolithic and "
                                 "the disaggregated deployment: deploy both, or give rpc_ms")
            if self.rpc_ms is not None and not self.rpc_ms >= 0:
                raise ValueError(f"rpc_ms must be >= 0, got {self.rpc_ms}")
            self.fleet()  # checks the fleet's inputs

    @property
    def target_ms(self) -> float:
        return TARGETS_MS[self.model] * self.target_scale

    def fleet(self) -> Fleet:
        """The TCO sweep's fleet."""
        return Fleet(self.fleet_qps, self.table_multiplier, self.years,
                     Growth(self.table_growth, self.compute_growth, self.load_growth)
                     ).with_settings(self.settings)


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
    """The deployment rows, then (with ``failures``) the failure rows, then (with ``tco``) the
    TCO sweep's rows (see the module)."""
    deployed: dict[str, float] = {}
    for arch in config.architectures:
        status(f"{arch}: deploying {config.model} on {config.cores} cores")
        with _deployment(config, arch) as d:
            layout = (f"{len(d.compute)} compute" + (
                f" + {len(d.memory)} memory x{config.replicas}" if d.memory else ""))
            status(f"{arch} ({layout}): searching the max QPS at p95 <= "
                   f"{config.target_ms:g} ms")
            qps, best = _max_qps(d, config)
            deployed[arch] = qps
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
    if config.tco:
        yield from _tco(config, deployed, status, tick)


def _rpc_s(config: Config, deployed: dict[str, float]) -> Optional[float]:
    if config.rpc_ms is not None:
        return config.rpc_ms / 1e3
    mono, dis = deployed.get("monolithic", 0.0), deployed.get("disaggregated", 0.0)
    if mono <= 0 or dis <= 0:
        return None
    return max(config.cores / dis - config.cores / mono, 0.0)


def _tco(config: Config, deployed: dict[str, float], status: Callable[[str], None],
         tick: Optional[Callable[[], None]]) -> Iterator[dict[str, Any]]:
    rpc_s = _rpc_s(config, deployed)
    if rpc_s is None:
        status("TCO sweep skipped: a deployment met its target at no rate, so the RPC cost "
               "was not measured (give --rpc-ms)")
        return
    source = "given" if config.rpc_ms is not None else "deployment"
    items = float(_stream(config, 1.0, 4000)[1].mean())
    rates: dict[int, float] = {}
    measured: list[Measured] = []
    for model in config.tco_models:
        m = measure_model(model, items, config.scale, config.kernel_mb, seed=config.seed,
                          rates=rates, status=status)
        measured.append(m)
        cap = m.capacity(rpc_s)
        yield {"kind": "capacity", **m.as_dict(), "rpc_s": rpc_s, "rpc_source": source,
               **{k: getattr(cap, k) for k in ("monolithic_qps_per_core",
                                               "compute_qps_per_core", "sparse_share")}}
        if tick:
            tick()
    fleet = config.fleet()
    status(f"TCO: {len(measured)} models over {config.years} years, each input halved and "
           f"doubled")
    yield from fleet_rows(measured, rpc_s, fleet)
    yield from sensitivity(measured, rpc_s, fleet)
    yield from regimes(measured, rpc_s, fleet)
    for arch in ("disaggregated", "disaggregated_nmp"):
        yield {"kind": "break_even", "architecture": arch,
               "rpc_s": break_even_rpc_s(measured, fleet, arch), "measured_rpc_s": rpc_s}
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
    both), over the failure runs ``lost_queries`` and whether every query is ``accounted``
    for; and from the TCO sweep ``tco`` (:func:`recengine.tco.headlines`, empty without it),
    ``break_even_rpc_s`` by architecture and ``regime_pays``, the share of the regime grid
    where each architecture costs less than monolithic."""
    tco = [r for r in rows if r["kind"] != "deployment"]
    rows = [r for r in rows if r["kind"] == "deployment"]
    healthy = {r["architecture"]: r for r in rows if r["failure"] is None}
    out: dict[str, Any] = {"qps": {a: r["qps"] for a, r in healthy.items()}, "qps_ratio": None}
    if "monolithic" in healthy and "disaggregated" in healthy and healthy["monolithic"]["qps"]:
        out["qps_ratio"] = healthy["disaggregated"]["qps"] / healthy["monolithic"]["qps"]
    failures = [r for r in rows if r["failure"] is not None]
    out["lost_queries"] = sum(r["lost_queries"] for r in failures)
    out["accounted"] = all(r["served"] + r["shed"] + r["failed"] == r["queries"]
                           for r in failures)
    out["tco"] = headlines(tco)
    out["break_even_rpc_s"] = {r["architecture"]: r["rpc_s"] for r in tco
                               if r["kind"] == "break_even"}
    grid = [r for r in tco if r["kind"] == "regime"]
    out["regime_pays"] = {a: sum((r["saving"] or 0) > 0 for r in grid if r["architecture"] == a)
                          / max(sum(r["architecture"] == a for r in grid), 1)
                          for a in sorted({r["architecture"] for r in grid})}
    return out


def plot_study(rows: Sequence[dict[str, Any]], path: str, config: Config) -> None:
    """Max QPS per architecture and the capacity each failure took while its node was down;
    with the TCO sweep, the disaggregated cluster's saving over table size and load, the
    fleet's TCO over the years (over the first year's monolithic cluster), and the
    sensitivity of each disaggregated cluster's three-year saving to every input (a
    tornado)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deploy = [r for r in rows if r["kind"] == "deployment"]
    healthy = [r for r in deploy if r["failure"] is None]
    failures = [r for r in deploy if r["failure"] is not None]
    fleet = [r for r in rows if r["kind"] == "tco" and r["model"] == "fleet"]
    tornado = [r for r in rows if r["kind"] == "sensitivity"]
    fig, axes = plt.subplots(2 if fleet else 1, 3, figsize=(15, 8.5 if fleet else 4),
                             squeeze=False)
    colors = {"monolithic": "#4c72b0", "disaggregated": "#dd8452",
              "disaggregated_nmp": "#55a868"}
    ax = axes[0][0]
    ax.bar([r["architecture"] for r in healthy], [r["qps"] for r in healthy],
           color=[colors[r["architecture"]] for r in healthy])
    ax.set_ylabel(f"QPS at p95 <= {config.target_ms:g} ms")
    ax.set_title(f"{config.model} on {config.cores} cores (Ray)")
    ax = axes[0][1]
    if failures:
        labels = [f"{r['architecture'][:5]}.\n{r['failure']}" for r in failures]
        ax.bar(labels, [100 * (r["capacity_lost"] or 0) for r in failures], color="#c44e52")
        ax.set_ylabel("capacity lost while down (%)")
        ax.set_title("a node killed mid-stream")
    else:
        ax.axis("off")
    if not fleet:
        axes[0][2].axis("off")
    else:
        years = sorted({r["year"] for r in fleet})
        grid = [r for r in rows if r["kind"] == "regime" and r["architecture"] == "disaggregated"]
        ax = axes[0][2]
        if grid:
            mults = sorted({r["table_multiplier"] for r in grid})
            loads = sorted({r["fleet_qps"] for r in grid})
            z = np.full((len(mults), len(loads)), np.nan)
            for r in grid:
                z[mults.index(r["table_multiplier"]), loads.index(r["fleet_qps"])] = (
                    np.nan if r["saving"] is None else r["saving"])
            im = ax.imshow(100 * np.clip(z, -1, 1), cmap="RdBu", vmin=-100, vmax=100,
                           origin="lower", aspect="auto")
            for i in range(len(mults)):
                for j in range(len(loads)):
                    ax.text(j, i, "n/a" if np.isnan(z[i, j]) else f"{100 * z[i, j]:.0f}",
                            ha="center", va="center", fontsize=7,
                            color="white" if abs(z[i, j]) > 0.6 else "black")
            ax.set_xticks(range(len(loads)), [f"{q:,.0f}" for q in loads], fontsize=8)
            ax.set_yticks(range(len(mults)), [f"{m:g}x" for m in mults], fontsize=8)
            ax.set_xlabel("peak QPS per model")
            ax.set_ylabel("tables over full scale")
            ax.set_title("disaggregated: 3-year saving (%)")
            fig.colorbar(im, ax=ax)
        else:
            ax.axis("off")
        ax = axes[1][0]
        for arch, color in colors.items():
            pts = [r for r in fleet if r["architecture"] == arch]
            ax.plot([r["year"] for r in pts], [r["tco_vs_first_monolithic"] for r in pts],
                    "o-", color=color, label=arch)
        ax.set_xticks(years)
        ax.set_xlabel("year")
        ax.set_ylabel("annual TCO / first year's monolithic")
        ax.set_title(f"fleet of {len(config.tco_models)} models, {config.fleet_qps:,.0f} QPS "
                     f"each")
        ax.legend()
        for ax, arch in zip(axes[1][1:], ("disaggregated", "disaggregated_nmp")):
            bars = sorted((r for r in tornado if r["architecture"] == arch),
                          key=lambda r: r["swing"] or 0.0)
            if not bars:
                ax.axis("off")
                continue
            base = 100 * bars[0]["baseline"]
            y = np.arange(len(bars))
            lo = np.array([base if r["saving_low"] is None else 100 * r["saving_low"]
                           for r in bars])
            hi = np.array([base if r["saving_high"] is None else 100 * r["saving_high"]
                           for r in bars])
            ax.barh(y, lo - base, left=base, color="#8172b2", label="input x0.5")
            ax.barh(y, hi - base, left=base, color="#ccb974", label="input x2")
            ax.axvline(base, color="k", lw=1)
            ax.axvline(0, color="grey", lw=1, ls="--")
            ax.set_yticks(y, [r["input"] for r in bars], fontsize=8)
            ax.set_xlabel(f"3-year TCO saving over monolithic (%), baseline {base:.0f}%")
            ax.set_title(f"{arch}: what moves the saving")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
