"""``recengine serve``: DeepRecSched against the static baseline, on the real server here or
in the simulator at any core count.

For each model, the model is built at ``scale`` and its sub-request latency curve is
profiled through the server on this machine (:meth:`Server.profile`). Simulated:
:class:`~recengine.sched.SimulatedServer` on ``cores`` cores of the curve profiled with
``profile_workers`` workers at once (1 by default: no contention between cores) at a
fraction of their capacity (``profile_loads``; with several, each run takes the curve of the
load it puts on the cores), each
sub-request taking the profiled median for its size (``service_times="profiled"``: drawn from
the spread the profile saw). Real: :class:`Server` with one worker per core (threads, or
processes with ``processes``). Then the static baseline's and DeepRecSched's latency-bounded
throughput at the model's p95 target (DeepRecInfra), each a search over arrival rates:
bisection over runs at fixed rates, or (``search="controller"``) DeepRecSys's running-p95
controller.

The static baseline splits every query into sub-requests of ``static_batch`` items (32 by
default: :data:`~recengine.sched.STATIC`, DeepRecInfra's fixed per-core batch size). Each row
also gives DeepRecSched's gain over running every query whole (``gain_over_whole``), the
other natural static server.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..models import TARGETS_MS, build
from ..rows import DISTRIBUTIONS
from ..sched import (
    BATCH_SIZES,
    STATIC,
    THRESHOLDS,
    ControllerSettings,
    Cpu,
    LatencyCurve,
    Policy,
    SimulatedServer,
    Tuned,
    deeprecsched,
    static_baseline,
)
from ..sched.controller import PROCESSES as CONTROLLER_PROCESSES
from ..sched.latency import check_loads
from ..shapes import resolve_model
from ..workload import ARRIVALS, QuerySizes
from .accelerator import Accelerator
from .backend import RealServer
from .server import Server

__all__ = [
    "SEARCHES",
    "SPAN_TARGETS",
    "Config",
    "ServeConfig",
    "config_dict",
    "iter_study",
    "plot_study",
    "static_sweep",
    "summarize_study",
]

#: How a policy's latency-bounded throughput is found: bracket and bisect the rate over runs
#: at fixed rates (:func:`~recengine.sched.max_qps`), or DeepRecSys's running-p95 controller on one
#: long run (:func:`~recengine.sched.controlled_qps`).
SEARCHES: tuple[str, ...] = ("bisect", "controller")

#: A run of the study (real or simulated) lasts this many of the model's latency targets (or
#: ``ServeConfig.queries`` queries, whichever is more), so real and simulated runs compare.
SPAN_TARGETS = 10


#: The most cores the simulator models, and queries a run takes.
MAX_SIMULATED_CORES = 1024
MAX_QUERIES = 10**7


@dataclass
class ServeConfig:
    """What ``recengine serve`` runs (see the command's help for each option)."""

    models: Sequence[str] = ("rmc1",)
    simulate: bool = False
    processes: bool = False
    cores: Sequence[int] = ()
    profile_workers: int = 1
    profile_loads: Sequence[float] = (0.9,)
    confirm: int = 1
    service_times: str = "median"
    search: str = "bisect"
    scale: float = 0.05
    target_ms: Optional[float] = None
    target_scale: float = 1.0
    static_batch: int = STATIC.batch_size
    batch_sizes: Sequence[int] = BATCH_SIZES
    patience: Optional[int] = None
    accelerator: str = "none"
    accelerator_curves: Optional[str] = None
    sizes: QuerySizes = field(default_factory=QuerySizes.lognormal)
    process: str = "poisson"
    distribution: str = "uniform"
    queries: int = 0
    rel_tol: float = 0.0
    seed: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        self.models = [resolve_model(m) for m in self.models]
        if self.target_ms is not None and not self.target_ms > 0:
            raise ValueError(f"the latency target must be positive, got {self.target_ms}")
        if not self.target_scale > 0:
            raise ValueError(f"the target scale must be positive, got {self.target_scale}")
        here = os.cpu_count() or 1
        if not self.cores:
            self.cores = [here]
        if any(c < 1 for c in self.cores):
            raise ValueError(f"core counts must be positive, got {list(self.cores)}")
        if not self.simulate and any(c > here for c in self.cores):
            raise ValueError(f"the real server has {here} cores here; use --simulate to study "
                             f"{max(self.cores)}")
        if any(c > MAX_SIMULATED_CORES for c in self.cores):
            raise ValueError(f"the simulator models at most {MAX_SIMULATED_CORES} cores, got "
                             f"{max(self.cores)}")
        if self.search not in SEARCHES:
            raise ValueError(f"the rate search is one of {', '.join(SEARCHES)}, got "
                             f"{self.search!r}")
        if self.search == "controller" and self.process not in CONTROLLER_PROCESSES:
            raise ValueError(f"DeepRecSys's controller draws Poisson arrivals; --arrivals "
                             f"{self.process} needs --search bisect")
        if self.service_times not in ("profiled", "median"):
            raise ValueError(f"service times are 'profiled' or 'median', got "
                             f"{self.service_times!r}")
        if self.static_batch < 1:
            raise ValueError(f"the static batch size must be positive, got {self.static_batch}")
        if self.accelerator not in ("none", "cuda", "modeled"):
            raise ValueError(f"unknown accelerator {self.accelerator!r}; expected none, cuda "
                             f"or modeled")
        if self.accelerator == "modeled" and not self.accelerator_curves:
            raise ValueError("a modeled accelerator needs --accelerator-curves FILE (JSON of "
                             "{model: {batches, ms}})")
        if not 1 <= self.profile_workers <= here:
            raise ValueError(f"the profile needs 1 to {here} workers (the cores here), got "
                             f"{self.profile_workers}")
        self.profile_loads = list(check_loads(self.profile_loads))
        if self.confirm < 0:
            raise ValueError(f"confirm must be non-negative, got {self.confirm}")
        if self.accelerator == "cuda" and self.simulate:
            raise ValueError("the simulator takes a modeled accelerator "
                             "(--accelerator modeled --accelerator-curves FILE)")
        if self.accelerator == "cuda" and not torch.cuda.is_available():
            raise ValueError("--accelerator cuda needs a CUDA device, and torch sees none here "
                             "(--accelerator modeled --accelerator-curves FILE models one)")
        if self.process not in ARRIVALS:
            raise ValueError(f"unknown arrival process {self.process!r}; expected one of "
                             f"{', '.join(ARRIVALS)}")
        if self.distribution not in (*DISTRIBUTIONS, "movielens"):
            raise ValueError(f"unknown row distribution {self.distribution!r}; expected one "
                             f"of {', '.join(DISTRIBUTIONS)}, movielens")
        if self.queries < 0 or self.queries > MAX_QUERIES:
            raise ValueError(f"queries must be in [0, {MAX_QUERIES}] (0: the default), got "
                             f"{self.queries}")
        if self.queries == 0:
            self.queries = 2000 if self.simulate else 300
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be non-negative, got {self.patience}")
        if not 1 <= self.repeats <= 100:
            raise ValueError(f"repeats must be in [1, 100], got {self.repeats}")
        if self.rel_tol <= 0:
            self.rel_tol = 0.02 if self.simulate else 0.05


#: The study's config, as ``recengine.studies`` looks it up.
Config = ServeConfig


def config_dict(config: ServeConfig) -> dict[str, Any]:
    d = asdict(config)
    d["sizes"] = config.sizes.describe()
    d["models"], d["cores"] = list(config.models), list(config.cores)
    d["batch_sizes"] = list(config.batch_sizes)
    return d


def _accelerator_curve(config: ServeConfig, model: str) -> Optional[LatencyCurve]:
    if config.accelerator != "modeled" or not config.accelerator_curves:
        return None
    with open(config.accelerator_curves, encoding="utf-8") as f:
        curves = json.load(f)
    if model not in curves:
        raise ValueError(f"{config.accelerator_curves} has no curve for {model}")
    return LatencyCurve.from_dict(curves[model], interpolation="log")  # DeepRecSys's model


def iter_study(config: ServeConfig, status: Callable[[str], None] = lambda m: None,
               tick: Optional[Callable[[], None]] = None) -> Iterator[dict[str, Any]]:
    """One row per model and core count: the static and DeepRecSched throughput and tails."""
    for name in config.models:
        target = (config.target_ms if config.target_ms is not None
                  else TARGETS_MS[name] * config.target_scale)
        status(f"{name}: building (scale {config.scale:g})")
        model = build(name, scale=config.scale, seed=config.seed)
        acc_curve = _accelerator_curve(config, name)
        if config.simulate:
            # Each repeat profiles again: the profile is where a simulated run's noise is.
            found: dict[int, list[dict[str, Any]]] = {c: [] for c in config.cores}
            for r in range(config.repeats):
                again = f" (repeat {r + 1} of {config.repeats})" if config.repeats > 1 else ""
                status(f"{name}: profiling {config.profile_workers} worker(s){again}")
                with Server(model, workers=config.profile_workers, seed=config.seed,
                            distribution=config.distribution,
                            processes=config.processes) as one:
                    items = _typical_items(config)
                    profiled: Cpu = (
                        one.profile(load=config.profile_loads[0], query_items=items)
                        if len(config.profile_loads) == 1 else
                        one.profile_loads(config.profile_loads, query_items=items))
                for cores in config.cores:
                    backend = SimulatedServer(profiled, cores, acc_curve, config.sizes,
                                              config.queries, config.seed, config.process,
                                              span_s=SPAN_TARGETS * target / 1e3,
                                              spread=config.service_times == "profiled")
                    found[cores].append(_search(config, name, cores, "simulated", backend,
                                                profiled, target, status, tick))
            for cores in config.cores:
                yield _median_repeat(found[cores])
            continue
        for cores in config.cores:
            accel = None
            if config.accelerator == "cuda":
                accel = Accelerator.cuda(model)
            elif acc_curve is not None:
                accel = Accelerator.modeled(acc_curve)
            repeats = []
            for _ in range(config.repeats):
                if config.processes:
                    status(f"{name}: starting {cores} worker processes")
                with Server(model, workers=cores, accelerator=accel, seed=config.seed,
                            distribution=config.distribution,
                            processes=config.processes) as server:
                    status(f"{name}: profiling {cores} workers")
                    curve = server.profile(query_items=_typical_items(config))
                    real = RealServer(server, config.sizes, config.queries, config.seed,
                                      config.process, span_s=SPAN_TARGETS * target / 1e3,
                                      curve=curve, confirm=config.confirm)
                    repeats.append(_search(config, name, cores, "real", real, curve, target,
                                           status, tick))
            yield _median_repeat(repeats)


def _median_repeat(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The repeat of the median gain over the static baseline, with every repeat's gains
    (``improvement_repeats``, ``gain_over_whole_repeats``) and QPS (``static_qps_repeats``,
    ``deeprecsched_qps_repeats``), so that one noisy run is seen as such."""
    order = sorted(range(len(rows)), key=lambda k: rows[k]["improvement"] or 0.0)
    row = dict(rows[order[(len(rows) - 1) // 2]])
    for key in ("improvement", "gain_over_whole", "static_qps", "deeprecsched_qps"):
        row[f"{key}_repeats"] = [r[key] for r in rows]
    return row


def _typical_items(config: ServeConfig) -> int:
    """The median query size of the study's workload (profiling queries have this many)."""
    return max(1, int(np.median(config.sizes.sample(np.random.default_rng(config.seed), 4096))))


def _search(config: ServeConfig, name: str, cores: int, mode: str, backend: Any,
            curve: Cpu, target: float, status: Callable[[str], None],
            tick: Optional[Callable[[], None]]) -> dict[str, Any]:
    """The static baseline's and DeepRecSched's latency-bounded throughput on ``backend``."""
    t0 = time.perf_counter()
    status(f"{name} on {cores} cores ({mode}): static baseline")
    controller = ControllerSettings(process=config.process) if (
        config.search == "controller") else None
    static = static_baseline(backend, target, config.rel_tol, Policy(config.static_batch),
                             controller)
    if tick:
        tick()

    def told(policy: Policy, qps: float) -> None:
        status(f"{name} on {cores} cores ({mode}): {policy.describe()}: {qps:,.0f} QPS")
        if tick:
            tick()

    tuned: Tuned = deeprecsched(backend, target, config.batch_sizes, THRESHOLDS,
                                config.rel_tol, config.patience, told, [static], controller)
    run = tuned.result
    largest = backend.largest_query()
    whole = next((q for p, q in [(static.policy, static.qps), *tuned.tried]
                  if p.offload_threshold is None and p.batch_size >= largest), None)
    return {
        "model": name, "mode": mode, "cores": cores, "target_ms": target,
        "scale": config.scale, "search": config.search,
        "service_times": config.service_times if mode == "simulated" else None,
        "static_batch": static.policy.batch_size, "static_qps": static.qps,
        "static_p95_ms": static.result.p95 if static.result else None,
        "deeprecsched_qps": tuned.qps,
        "improvement": tuned.qps / static.qps if static.qps > 0 else None,
        "whole_qps": whole,
        "gain_over_whole": tuned.qps / whole if whole else None,
        "batch_size": tuned.policy.batch_size,
        "offload_threshold": tuned.policy.offload_threshold,
        "p95_ms": run.p95 if run else None, "p99_ms": run.p99 if run else None,
        "p50_ms": run.p50 if run else None,
        "offloaded": (run.offloaded / run.queries) if run else None,
        "cpu_curve": curve.to_dict(),
        "tried": [{"batch_size": p.batch_size, "offload_threshold": p.offload_threshold,
                   "qps": q} for p, q in tuned.tried],
        "search_s": time.perf_counter() - t0,
    }


def static_sweep(rows: Sequence[dict[str, Any]]) -> dict[int, Optional[float]]:
    """DeepRecSched's mean gain over a static baseline that runs every model of ``rows`` at
    one batch size, for each batch size every row's search tried (CPU only); ``None`` where
    that size meets the target at no rate for some model.

    Example::

        >>> static_sweep([{"deeprecsched_qps": 300.0, "tried": [
        ...     {"batch_size": 1024, "offload_threshold": None, "qps": 0.0},
        ...     {"batch_size": 64, "offload_threshold": None, "qps": 200.0}]}])
        {1024: None, 64: 1.5}
    """
    tables = [{t["batch_size"]: t["qps"] for t in r["tried"] if t["offload_threshold"] is None}
              for r in rows]
    if not tables:
        return {}
    common = sorted(set.intersection(*(set(t) for t in tables)), reverse=True)
    sweep: dict[int, Optional[float]] = {}
    for b in common:
        qps = [t[b] for t in tables]
        sweep[b] = (None if min(qps) <= 0 else
                    sum(r["deeprecsched_qps"] / q for r, q in zip(rows, qps)) / len(rows))
    return sweep


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DeepRecSched's mean gain over the static baseline and over whole queries, and (per core
    count) its mean gain over one static batch size for every model (:func:`static_sweep`)."""
    ratios = [r["improvement"] for r in rows if r["improvement"]]
    over_whole = [r["gain_over_whole"] for r in rows if r["gain_over_whole"]]
    cores = list(dict.fromkeys(r["cores"] for r in rows))
    sweep = {c: static_sweep([r for r in rows if r["cores"] == c]) for c in cores}
    # The mean gain of each repeat (over the runs that have one): its spread is the noise.
    repeats = max((len(r.get("improvement_repeats") or ()) for r in rows), default=0)
    per_repeat = []
    for k in range(repeats):
        gains = [r["improvement_repeats"][k] for r in rows
                 if len(r.get("improvement_repeats") or ()) > k and r["improvement_repeats"][k]]
        per_repeat.append(sum(gains) / len(gains) if gains else None)
    return {"mean_improvement": sum(ratios) / len(ratios) if ratios else None,
            "mean_improvement_repeats": per_repeat,
            "mean_gain_over_whole": sum(over_whole) / len(over_whole) if over_whole else None,
            "gain_over_one_static_batch": {str(c): {str(b): g for b, g in sw.items()}
                                           for c, sw in sweep.items()}}


def plot_study(rows: Sequence[dict[str, Any]], path: str,
               config: Optional[ServeConfig] = None) -> None:
    """Latency-bounded QPS against batch size per model and core count (DeepRecSched's
    climb), the static baseline dashed."""
    from ..studies._output import figure, save_figure

    fig, axes = figure(len(rows), columns=min(len(rows), 4), size=(4.0, 3.4))
    for ax, r in zip(axes, rows):
        climb = [t for t in r["tried"] if t["offload_threshold"] is None]
        ax.plot([t["batch_size"] for t in climb], [t["qps"] for t in climb], "o-",
                label="DeepRecSched's search")
        ax.axhline(r["static_qps"], ls="--", color="grey",
                   label=f"static baseline (batch {r['static_batch']})")
        ax.set_xscale("log", base=2)
        sizes = sorted({t["batch_size"] for t in climb})
        ax.set_xticks(sizes, [str(b) for b in sizes], fontsize=7, rotation=45)
        ax.set_title(f"{r['model']}, {r['cores']} cores ({r['mode']}), p95 <= "
                     f"{r['target_ms']:g} ms", fontsize=9)
        ax.set_xlabel("batch size (items per sub-request)")
        ax.set_ylabel("latency-bounded throughput (QPS)")
        ax.legend(fontsize=7, loc="best")
    setting = "" if config is None else (
        f": {'simulated' if config.simulate else 'real server'}, scale {config.scale:g}, "
        f"{config.sizes.describe()} items")
    save_figure(fig, path, f"DeepRecSched against a static baseline{setting}")
