"""``recengine hercules``: Hercules' two stages on this machine's profiles.

**Stage 1.** For each model, its sub-request latency curves are profiled through the real
server here (:func:`~.profile.profile_cpu`: one instance at each thread count, and 1 to all
cores' worth of single-thread workers busy at once as threads and as processes), or read from
``profiles`` (a JSON file ``--save-profiles`` wrote, e.g. on a 16-core machine). Each server
type (:data:`SERVER_TYPES`) gets a :class:`~.evaluate.Machine`: ``cpu`` the profile alone,
``cpu-gpu`` with an accelerator's whole-query curves (``gpu_curves``; default: the H200's,
shipped with recengine), ``cpu-nmp`` with RecNMP's SLS curve emulated for the model
(:func:`recengine.nmp.profile_sls`). On each, :func:`~.evaluate.compare` runs the gradient
search, the exhaustive grid, DeepRecSched and the naive schedule. With ``check``, the chosen
schedule of those models is also served on the real server here (worker threads or
processes, the accelerator on CUDA when there is one) and its measured latency-bounded
throughput and resident memory are reported next to the prediction.

**Stage 2.** Each model's load over ``slots`` slots of a day follows :func:`~.provision.diurnal`
with its peak at ``peak_servers`` CPU-only servers' worth of its best Stage-1 throughput,
the models' peaks ``phase_spread`` hours apart from 18:00. The cluster is provisioned by the
integer program (:func:`~.provision.provision`, Hercules), the greedy and the
heterogeneity-oblivious baselines, for each objective (servers and peak power), from Stage
1's capacities.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from ..models import TARGETS_MS, build, model_names
from ..sched import BATCH_SIZES, THRESHOLDS, LatencyCurve, max_qps
from ..shapes import resolve_model
from ..workload import QuerySizes
from .evaluate import Comparison, Evaluator, Machine, compare
from .profile import BATCHES, CpuProfile, profile_cpu
from .provision import OBJECTIVES, Plan, ServerType, diurnal, greedy, oblivious, provision
from .schedule import pss_bytes

__all__ = ["SERVER_TYPES", "Config", "HerculesConfig", "config_dict", "iter_study",
           "plot_study", "server_type", "summarize_study"]

#: The server types of the study, with :func:`server_type`'s documented defaults.
SERVER_TYPES: tuple[str, ...] = ("cpu", "cpu-gpu", "cpu-nmp")
#: The schedulers of the second stage.
SCHEDULERS: tuple[str, ...] = ("hercules", "greedy", "oblivious")


def server_type(name: str, cores: int, memory_gb: float = 128.0,
                available: Optional[int] = None) -> ServerType:
    """A server type's documented defaults on a CPU of ``cores`` cores (our assumptions, not
    measurements; override them through :class:`HerculesConfig.power`):

    * ``cpu``: idle ``50 + 3 x cores`` W, peak ``50 + 12 x cores`` W (a single-socket server:
      98 W idle and 242 W peak at 16 cores); price 1.
    * ``cpu-gpu``: the same CPU and an H200: +75 W idle, +700 W peak (its board power);
      price 4.
    * ``cpu-nmp``: the same CPU with RecNMP DIMMs, whose buffer-chip logic we put at 3 W
      busy and 1 W idle for each of 8 DIMMs: +8 W idle, +24 W peak; price 1.2.

    Example::

        >>> server_type("cpu-gpu", 16).peak_w
        942.0
    """
    idle, peak = 50.0 + 3.0 * cores, 50.0 + 12.0 * cores
    extra = {"cpu": (0.0, 0.0, 1.0, "cpu"), "cpu-gpu": (75.0, 700.0, 4.0, "gpu"),
             "cpu-nmp": (8.0, 24.0, 1.2, "nmp")}
    if name not in extra:
        raise ValueError(f"unknown server type {name!r}; expected one of "
                         f"{', '.join(SERVER_TYPES)}")
    di, dp, price, device = extra[name]
    return ServerType(name, idle + di, peak + dp, available, cores, memory_gb, device, price)


@dataclass
class HerculesConfig:
    """What ``recengine hercules`` runs (see the command's help for each option)."""

    models: Sequence[str] = field(default_factory=model_names)
    servers: Sequence[str] = SERVER_TYPES
    scale: float = 0.05
    cores: int = 0
    memory_gb: float = 128.0
    profiles: Optional[str] = None
    save_profiles: Optional[str] = None
    profile_batches: Sequence[int] = BATCHES
    profile_span_s: float = 0.25
    threads_only: bool = False
    gpu_curves: Optional[str] = None
    gpu_dense_curves: Optional[str] = None
    nmp_system: str = "recnmp"
    nmp_table_mb: float = 256.0
    sls_fraction: float = 0.79
    batch_sizes: Sequence[int] = BATCH_SIZES
    thresholds: Sequence[int] = THRESHOLDS
    no_grid: bool = False
    tolerance: float = 0.0
    sizes: QuerySizes = field(default_factory=QuerySizes.lognormal)
    queries: int = 1000
    target_scale: float = 1.0
    slots: int = 24
    peak_servers: float = 20.0
    trough: float = 0.35
    phase_spread: float = 3.0
    headroom: float = 0.1
    available: Mapping[str, int] = field(default_factory=dict)
    max_switches: Optional[int] = None
    power: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    check: Sequence[str] = ()
    check_confirm: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.models = [resolve_model(m) for m in self.models]
        if not self.models:
            raise ValueError("name at least one model")
        self.servers = list(dict.fromkeys(self.servers))
        for s in self.servers:
            server_type(s, 1)  # a clear error for an unknown type
        for s in list(self.available) + list(self.power):
            if s not in self.servers:
                raise ValueError(f"--available/--power name server type {s!r}, which the "
                                 f"study does not run ({', '.join(self.servers)})")
        here = os.cpu_count() or 1
        if self.profiles is None:
            if self.cores == 0:
                self.cores = here
            if not 1 <= self.cores <= here:
                raise ValueError(f"profiling a server of {self.cores} cores needs that many "
                                 f"here ({here}); or give --profiles FILE")
        elif not os.path.exists(self.profiles):
            raise ValueError(f"no profiles file {self.profiles!r}")
        for path in (self.gpu_curves, self.gpu_dense_curves):
            if path is not None and not os.path.exists(path):
                raise ValueError(f"no GPU curves file {path!r}")
        self.check = [resolve_model(m) for m in self.check]
        if any(m not in self.models for m in self.check):
            raise ValueError("--check names models the study does not run")
        for name, v in (("scale", self.scale), ("memory", self.memory_gb),
                        ("target scale", self.target_scale),
                        ("peak servers", self.peak_servers)):
            if not v > 0:
                raise ValueError(f"the {name} must be positive, got {v}")
        if not 0 < self.trough <= 1:
            raise ValueError(f"the trough must be in (0, 1], got {self.trough}")
        if not 0 <= self.headroom < 10:
            raise ValueError(f"the headroom must be in [0, 10), got {self.headroom}")
        if not 0 <= self.sls_fraction <= 1:
            raise ValueError(f"the SLS fraction must be in [0, 1], got {self.sls_fraction}")
        if not 2 <= self.slots <= 24 * 60:
            raise ValueError(f"slots must be in [2, 1440], got {self.slots}")
        if self.queries < 10:
            raise ValueError(f"a run needs at least 10 queries, got {self.queries}")
        if not self.batch_sizes:
            raise ValueError("name at least one batch size")


#: The study's config, as ``recengine.studies`` looks it up.
Config = HerculesConfig


def config_dict(config: HerculesConfig) -> dict[str, Any]:
    d = asdict(config)
    d["sizes"] = config.sizes.describe()
    for k in ("models", "servers", "profile_batches", "batch_sizes", "thresholds", "check"):
        d[k] = list(d[k])
    d["power"] = {k: list(v) for k, v in config.power.items()}
    return d


def gpu_curves(path: Optional[str] = None, part: str = "whole") -> dict[str, LatencyCurve]:
    """Each model's accelerator curve (log-interpolated, DeepRecSys's model) of whole queries
    or (``part="dense"``) of the dense part alone, from ``path`` (JSON ``{model: {batches,
    ms}}``, as ``benches/profile_accelerator.py [--part dense]`` writes), by default the H200
    curves shipped with recengine."""
    if part not in ("whole", "dense"):
        raise ValueError(f"part is 'whole' or 'dense', got {part!r}")
    if path is None:
        packaged = "accelerator_h200.json" if part == "whole" else "accelerator_h200_dense.json"
        text = resources.files(__package__).joinpath(packaged).read_text()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return {m: LatencyCurve.from_dict(d, interpolation="log") for m, d in json.loads(text).items()}


def _servers(config: HerculesConfig, cores: int) -> dict[str, ServerType]:
    out = {}
    for name in config.servers:
        s = server_type(name, cores, config.memory_gb, config.available.get(name))
        if name in config.power:
            idle, peak = config.power[name]
            s = replace(s, idle_w=idle, peak_w=peak)
        out[name] = s
    return out


def _profiles(config: HerculesConfig) -> dict[str, Any]:
    if config.profiles is None:
        return {}
    with open(config.profiles, encoding="utf-8") as f:
        doc = json.load(f)
    missing = [m for m in config.models if m not in doc.get("profiles", {})]
    if missing:
        raise ValueError(f"{config.profiles} has no profile of {', '.join(missing)}")
    return doc


def iter_study(config: HerculesConfig, status: Callable[[str], None] = lambda m: None,
               tick: Optional[Callable[[], None]] = None) -> Iterator[dict[str, Any]]:
    """Stage 1's rows (``kind: "schedule"``, one per model and server type), then Stage 2's
    (``kind: "cluster"``, one per scheduler and objective)."""
    loaded = _profiles(config)
    scale = float(loaded.get("scale", config.scale))
    saved: dict[str, Any] = {"scale": scale, "profiles": {}, "nmp": {}}
    curves, dense = {}, {}
    if "cpu-gpu" in config.servers:
        curves = gpu_curves(config.gpu_curves)
        dense = gpu_curves(config.gpu_dense_curves, "dense")
    rows: list[dict[str, Any]] = []
    for name in config.models:
        target = TARGETS_MS[name] * config.target_scale
        model = None
        if loaded:
            profile = CpuProfile.from_dict(loaded["profiles"][name])
            if name in config.check:  # served here: the profiles must come from here
                model = build(name, scale=scale, seed=config.seed)
        else:
            status(f"{name}: building (scale {scale:g})")
            model = build(name, scale=scale, seed=config.seed)
            profile = profile_cpu(model, config.cores, batches=config.profile_batches,
                                  span_s=config.profile_span_s, seed=config.seed,
                                  processes=not config.threads_only, status=status)
        saved["profiles"][name] = profile.to_dict()
        servers = _servers(config, profile.cores)
        for sname, server in servers.items():
            accelerator = nmp = None
            if sname == "cpu-gpu":
                if name not in curves or name not in dense:
                    raise ValueError(f"the GPU curves have no curve of {name}")
                accelerator = curves[name]
            if sname == "cpu-nmp":
                nmp = _nmp_curve(config, name, loaded, saved, status)
            machine = Machine(server, profile, accelerator, nmp, config.sls_fraction,
                              dense.get(name) if sname == "cpu-gpu" else None)
            evaluator = Evaluator(machine, target, config.sizes, config.queries, config.seed,
                                  config.batch_sizes, config.thresholds,
                                  memory=profile.footprint.scaled(1 / scale))
            t0 = time.perf_counter()
            found = compare(evaluator, config.tolerance, not config.no_grid, status)
            row = _row(name, sname, target, evaluator, found, time.perf_counter() - t0)
            if name in config.check and sname in ("cpu", "cpu-gpu"):
                assert model is not None
                row.update(_check(config, model, evaluator, found, status))
            rows.append(row)
            if tick:
                tick()
            yield row
    if config.save_profiles:
        with open(config.save_profiles, "w", encoding="utf-8") as f:
            json.dump(saved, f)
    yield from _stage2(config, rows, status)


def _nmp_curve(config: HerculesConfig, name: str, loaded: dict[str, Any],
               saved: dict[str, Any], status: Callable[[str], None]) -> Any:
    from ..nmp import SLSCurve, profile_sls

    if name in loaded.get("nmp", {}):
        d = loaded["nmp"][name]
    else:
        status(f"{name}: emulating SLS on {config.nmp_system} ({config.nmp_table_mb:g} MiB "
               f"tables)")
        c = profile_sls(name, system=config.nmp_system, table_mb=config.nmp_table_mb,
                        seed=config.seed)
        d = {"system": c.system, "batches": list(c.batches), "nmp_ms": list(c.nmp_ms),
             "host_ms": list(c.host_ms)}
    saved["nmp"][name] = d
    return SLSCurve(name, d["system"], tuple(d["batches"]), tuple(d["nmp_ms"]),
                    tuple(d["host_ms"]))


def _row(name: str, server: str, target: float, evaluator: Evaluator, c: Comparison,
         seconds: float) -> dict[str, Any]:
    best = evaluator.schedule(c.search.point)
    full = evaluator.memory
    return {
        "kind": "schedule", "model": name, "server": server,
        "cores": evaluator.machine.server.cores, "target_ms": target,
        "config": best.to_dict(), "qps": c.search.value,
        "grid_best_qps": c.grid.value if c.grid else None,
        "grid_config": evaluator.schedule(c.grid.point).to_dict() if c.grid else None,
        "gap": c.gap, "evaluations": c.search.evaluations,
        "grid_evaluations": c.grid.evaluations if c.grid else c.grid_size,
        "naive_qps": c.naive_qps,
        "gain_over_naive": c.search.value / c.naive_qps if c.naive_qps > 0 else None,
        "deeprecsched_qps": c.deeprecsched_qps,
        "deeprecsched_config": c.deeprecsched.to_dict(),
        "deeprecsched_evaluations": c.deeprecsched_evaluations,
        "memory_gb": full.of(best) / 2**30,
        "memory_gb_processes": full.of(replace(best, sharing="processes")) / 2**30,
        "memory_gb_threads": full.of(replace(best, sharing="threads")) / 2**30,
        "largest_query": evaluator.largest, "search_s": seconds,
    }


def _check(config: HerculesConfig, model: Any, evaluator: Evaluator, c: Comparison,
           status: Callable[[str], None]) -> dict[str, Any]:
    """Serve the chosen schedule on the real server here: its measured latency-bounded
    throughput, and the resident memory of its workers."""
    import torch

    from ..serving import Accelerator, RealServer, Server

    s = evaluator.schedule(c.search.point)
    here = os.cpu_count() or 1
    if s.cores > here:
        return {"real_qps": None, "real_note": f"the schedule keeps {s.cores} cores busy and "
                                               f"this machine has {here}"}
    if s.dense == "gpu":
        return {"real_qps": None, "real_note": "runs the dense part on the GPU, which the "
                                               "real server does not do"}
    accel = None
    if s.offload_threshold is not None:
        if not torch.cuda.is_available():
            return {"real_qps": None, "real_note": "offloads, and no CUDA device here"}
        # In a process of its own, as its curve was profiled: driven from the server's
        # process, its kernel launches would share the interpreter lock with the dispatcher.
        accel = Accelerator.process_on("cuda")
    status(f"{evaluator.machine.cpu.model} on {evaluator.machine.server.name}: serving "
           f"{s.describe()} on the real server")
    with Server(model, workers=s.instances, threads_per_worker=s.threads, accelerator=accel,
                seed=config.seed, processes=s.sharing == "processes") as server:
        real = RealServer(server, config.sizes, 300, config.seed,
                          span_s=10 * evaluator.target_ms / 1e3, curve=evaluator.curve(s),
                          confirm=config.check_confirm)
        qps, _ = max_qps(lambda q: real.run(s.policy(), q), evaluator.target_ms,
                         evaluator.qps(s) or real.capacity_hint(s.policy()), 0.05,
                         confirm=config.check_confirm)
        resident = _resident_bytes(server)
        offloaded = server.last_accelerator_service
    predicted = c.search.value
    out = {"real_qps": qps, "real_gap": qps / predicted - 1 if predicted > 0 else None,
           "real_resident_gb": resident / 2**30 if resident else None}
    if offloaded and evaluator.machine.accelerator is not None:
        # The accelerator's time per offloaded query on the real server (handing over
        # included) against what its curve, profiled on an idle machine, says for them.
        out["real_accel_ms"] = float(np.median([r.held for r in offloaded])) * 1e3
        out["curve_accel_ms"] = float(np.median(
            [evaluator.machine.accelerator(r.items) for r in offloaded]))
    return out


def _resident_bytes(server: Any) -> Optional[int]:
    """The memory a server's workers hold: the proportional set size of its worker
    processes, or this process's for worker threads; None where /proc cannot tell."""
    pids = [p for p in server.worker_pids if p] if server.processes else [os.getpid()]
    sizes = [pss_bytes(p) for p in pids]
    return None if any(s is None for s in sizes) or not sizes else sum(
        s for s in sizes if s is not None)


def _stage2(config: HerculesConfig, rows: Sequence[dict[str, Any]],
            status: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """Provision the cluster from Stage 1's capacities: one row per scheduler and objective."""
    capacity = {(r["model"], r["server"]): r["qps"] for r in rows if r["qps"] > 0}
    models = list(dict.fromkeys(r["model"] for r in rows))
    servers = list(_servers(config, rows[0]["cores"]).values())
    # Scarce accelerated servers by default: 2 CPU + GPU and 4 CPU + NMP per model.
    default_available = {"cpu-gpu": 2 * len(models), "cpu-nmp": 4 * len(models)}
    servers = [s if s.name in config.available or s.name not in default_available
               else replace(s, available=default_available[s.name]) for s in servers]
    loads: dict[str, Sequence[float]] = {}
    for k, m in enumerate(models):
        unit = capacity.get((m, "cpu")) or max(q for (mm, _), q in capacity.items() if mm == m)
        loads[m] = diurnal(config.peak_servers * unit, config.slots, config.trough,
                           (18.0 + k * config.phase_spread) % 24).tolist()
    for objective in OBJECTIVES:
        status(f"provisioning for {objective}: integer program and baselines")
        plans = {"greedy": greedy(loads, capacity, servers, objective, config.headroom)}
        plans["oblivious"] = oblivious(loads, capacity, servers, objective, config.headroom)
        plans["hercules"] = provision(loads, capacity, servers, objective, config.headroom,
                                      config.max_switches)
        base = plans["greedy"]
        for name in SCHEDULERS:
            yield _cluster_row(name, objective, plans[name], base, config)


def _cluster_row(name: str, objective: str, plan: Plan, base: Plan,
                 config: HerculesConfig) -> dict[str, Any]:
    slots = len(plan.counts)
    hours = 24.0 / slots
    per_slot = plan.counts.sum(axis=1)  # [t, s]
    return {
        "kind": "cluster", "scheduler": name, "objective": objective,
        "capacity": plan.servers / slots, "peak_servers": plan.peak_servers,
        "power_w": plan.power_w, "energy_kwh": plan.energy_kwh,
        "capacity_saving": 1 - plan.servers / base.servers if base.servers else None,
        "power_saving": 1 - plan.power_w / base.power_w if base.power_w else None,
        "energy_saving": 1 - plan.energy_kwh / base.energy_kwh if base.energy_kwh else None,
        "switches_per_hour": float(plan.switches.mean() / hours),
        "max_switches_per_hour": float(plan.switches.max(initial=0) / hours),
        "servers_per_slot": {s.name: per_slot[:, k].tolist()
                             for k, s in enumerate(plan.server_types)},
        "meets": plan.meets(config.headroom),
    }


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The search's worst gap to the grid and its largest share of the grid's evaluations,
    the best gain over the naive schedule, and Hercules' savings over greedy."""
    stage1 = [r for r in rows if r.get("kind") == "schedule"]
    gaps = [r["gap"] for r in stage1 if r["gap"] is not None]
    shares = [r["evaluations"] / r["grid_evaluations"] for r in stage1
              if r["grid_evaluations"]]
    gains = [r["gain_over_naive"] for r in stage1 if r["gain_over_naive"]]
    checked = [r for r in stage1 if r.get("real_gap") is not None]
    out: dict[str, Any] = {
        "worst_gap": max(gaps) if gaps else None,
        "within_2pct": sum(g <= 0.02 for g in gaps), "compared": len(gaps),
        "most_evaluations_share": max(shares) if shares else None,
        "best_gain_over_naive": max(gains) if gains else None,
        "mean_gain_over_naive": float(np.mean(gains)) if gains else None,
        "worst_real_gap": max((abs(r["real_gap"]) for r in checked), default=None),
    }
    for r in rows:
        if r.get("kind") == "cluster" and r["scheduler"] == "hercules":
            key = "capacity_saving" if r["objective"] == "capacity" else "power_saving"
            out[f"{key}_{r['objective']}"] = r[key]
    return out


def plot_study(rows: Sequence[dict[str, Any]], path: str,
               config: Optional[HerculesConfig] = None) -> None:
    """Left: each (model, server type)'s latency-bounded QPS of the naive schedule,
    DeepRecSched and Hercules' search, over the naive. Right: servers provisioned over the day
    by each scheduler (objective: servers)."""
    from ..studies._output import figure, save_figure

    stage1 = [r for r in rows if r.get("kind") == "schedule"]
    cluster = [r for r in rows if r.get("kind") == "cluster" and r["objective"] == "capacity"]
    fig, axes = figure(2, columns=1, size=(max(7.0, 0.4 * len(stage1) + 2), 3.8))
    ax = axes[0]
    x = np.arange(len(stage1))
    for k, (key, label) in enumerate((("deeprecsched_qps", "DeepRecSched"),
                                      ("qps", "Hercules' search"),
                                      ("grid_best_qps", "grid optimum"))):
        vals = [(r[key] or 0) / r["naive_qps"] if r["naive_qps"] else 0 for r in stage1]
        ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=label)
    ax.axhline(1.0, color="grey", ls="--", lw=0.8, label="naive schedule")
    ax.set_xticks(x, [f"{r['model']}\n{r['server']}" for r in stage1], fontsize=6, rotation=90)
    ax.set_ylabel("latency-bounded QPS / naive schedule's")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Stage 1: scheduling search", fontsize=9)
    ax = axes[1]
    for r in cluster:
        total = np.sum([v for v in r["servers_per_slot"].values()], axis=0)
        ax.step(np.arange(len(total)), total, where="post",
                label=f"{r['scheduler']} ({r['capacity']:.1f} on average)")
    ax.set_xlabel("slot (hour of the day)")
    ax.set_ylabel("servers provisioned")
    ax.legend(fontsize=7)
    ax.set_title("Stage 2: provisioning (objective: servers)", fontsize=9)
    save_figure(fig, path, "Hercules: scheduling search and cluster provisioning")
