"""The sharding study behind ``recengine shard``: one DeepRecInfra model served singular and
sharded by each strategy, in process and on Ray, from the same queries.

For each (strategy, backend) the study plans the model's tables on ``shards`` shards, builds
the sharded embedding and serves ``queries`` queries of ``batch`` samples (uniform random ids,
the model's pooling factors) one after another. In process, every strategy takes each query in
turn, so a slow spell of the machine falls on all of them. It reports per-query latency (p50,
p99), the p99 overhead over singular in-process serving (that study's baseline, the model on one
server), the compute overhead (CPU seconds of this process, plus the shard actors' on Ray, over
singular in-process serving's), the lookups each shard call carries, and the bytes each shard
holds.

The model's parts for the ``"net"`` strategy (:func:`model_nets`): NCF's matrix-factorisation
and MLP tables, DIN's user-side and item-side tables, and, for the models whose tables are all
alike, the first half of the tables as one part and the rest as the other.

Example::

    >>> rows = run_study(StudyConfig(model="ncf", shards=2, queries=20, table_mb=4,
    ...                              backends=("inprocess",)))
    >>> sorted({r["strategy"] for r in rows}) == sorted(STRATEGIES)
    True
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .. import get_num_threads
from ..shapes import model_bytes, model_tables, resolve_model
from ..table import EmbeddingTable
from .distributed import RayShardedEmbedding, save_tables
from .inprocess import ShardedEmbedding
from .plan import STRATEGIES, ShardPlan, ShardTable, plan

__all__ = [
    "BACKENDS",
    "MAX_SHARDS",
    "Config",
    "StudyConfig",
    "config_dict",
    "iter_study",
    "model_nets",
    "plot_study",
    "run_study",
    "study_plans",
    "study_tables",
    "summarize_study",
]

#: Where the shards run: this process's thread pool, or one Ray actor per shard.
BACKENDS: tuple[str, ...] = ("inprocess", "ray")


#: The most shards the study places tables on.
MAX_SHARDS = 1024


@dataclass
class StudyConfig:
    """What :func:`run_study` measures.

    Args:
        model: a DeepRecInfra model name.
        shards: shards for the sharded strategies.
        strategies: planners to compare (singular is always run: it is the baseline).
        backends: "inprocess" and/or "ray".
        queries: timed queries per (strategy, backend); ``warmup`` more run first.
        batch: samples per query.
        table_mb: the model's fp32 tables are scaled to about this many MiB in all.
        memory_mb: per-shard memory cap for the planners (None: no cap).
        seed: of tables and queries.
        ray_address: an existing Ray cluster (None: a local one of ``ray_cpus`` CPUs).
        ray_cpus: CPUs of the local Ray instance (None: all).
        timeout_s: deadline of one distributed lookup.
        repeats: rounds of the in-process queries (each strategy takes every query once a
            round): the rows pool the rounds, and the summary gives the best strategy's
            spread over them (Ray runs one round: its actors are the slow part).
    """

    model: str = "rmc1"
    shards: int = 4
    strategies: Sequence[str] = STRATEGIES
    backends: Sequence[str] = BACKENDS
    queries: int = 300
    warmup: int = 20
    batch: int = 16
    table_mb: float = 128.0
    memory_mb: Optional[float] = None
    seed: int = 0
    ray_address: Optional[str] = None
    ray_cpus: Optional[int] = None
    timeout_s: float = 30.0
    repeats: int = 3

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)
        if not 1 <= self.repeats <= 100:
            raise ValueError(f"repeats must be in [1, 100], got {self.repeats}")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards must be in [1, {MAX_SHARDS}] (each is a thread pool or a "
                             f"Ray actor process), got {self.shards}")
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ValueError(f"unknown strategy {s!r}; expected some of "
                                 f"{', '.join(STRATEGIES)}")
        for b in self.backends:
            if b not in BACKENDS:
                raise ValueError(f"unknown backend {b!r}; expected some of {', '.join(BACKENDS)}")
        if self.queries < 1 or self.batch < 1 or self.warmup < 0:
            raise ValueError("queries and batch must be >= 1 and warmup >= 0")
        if not self.table_mb > 0:
            raise ValueError(f"table_mb must be positive, got {self.table_mb}")


#: The study's config, as ``recengine.studies`` looks it up.
Config = StudyConfig


def model_nets(model: str, count: int) -> list[str]:
    """The part (net) of each of ``model``'s ``count`` tables (see the module's note)."""
    model = resolve_model(model)
    if model == "ncf":
        return ["mf", "mf", "mlp", "mlp"][:count] + ["mlp"] * max(0, count - 4)
    if model == "din":
        return ["user", "user", "item", "item"][:count] + ["item"] * max(0, count - 4)
    half = (count + 1) // 2
    return ["user"] * half + ["item"] * (count - half)


def study_tables(config: StudyConfig) -> list[ShardTable]:
    """The model's tables at the study's scale, named t0, t1 ... with their parts (nets)."""
    scale = min(1.0, config.table_mb * 2**20 / model_bytes(config.model))
    shapes = model_tables(config.model, scale)
    nets = model_nets(config.model, len(shapes))
    return [ShardTable.from_spec(s, f"t{i}", net=n) for i, (s, n) in enumerate(zip(shapes, nets))]


def study_plans(config: StudyConfig, specs: Optional[Sequence[ShardTable]] = None
                ) -> dict[str, ShardPlan]:
    """Each strategy's plan of the study's tables, singular first."""
    specs = study_tables(config) if specs is None else specs
    cap = None if config.memory_mb is None else int(config.memory_mb * 2**20)
    strategies = ["singular", *[s for s in config.strategies if s != "singular"]]
    return {s: plan(specs, config.shards, strategy=s, memory_per_shard=cap, batch=config.batch)
            for s in dict.fromkeys(strategies)}


def _queries(specs: Sequence[ShardTable], n: int, batch: int, seed: int
             ) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = [np.full(batch, round(t.lookups), dtype=np.int64) for t in specs]
        indices = [rng.integers(0, t.num_rows, int(n.sum()), dtype=np.int64)
                   for t, n in zip(specs, lengths)]
        out.append((indices, lengths))
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _serve(embs: Sequence[Any], queries: Sequence[Any], warmup: int,
           tick: Callable[[], None]) -> list[tuple[list[float], float]]:
    """Serve every query on each of ``embs`` in turn (query by query, so that a slow spell of
    the machine falls on all of them, and starting each query with the next one, so that none
    always goes first): per embedding, its per-query latencies (s) and the CPU seconds of
    this process its timed queries used."""
    for indices, lengths in queries[:warmup]:
        for emb in embs:
            emb.lookup(indices, lengths=lengths)
    times: list[list[float]] = [[] for _ in embs]
    cpu = [0.0] * len(embs)
    n = len(embs)
    for q, (indices, lengths) in enumerate(queries[warmup:]):
        for k in ((q + j) % n for j in range(n)):  # each query starts with the next one
            emb = embs[k]
            c0, t0 = time.process_time(), time.perf_counter()
            emb.lookup(indices, lengths=lengths)
            times[k].append(time.perf_counter() - t0)
            cpu[k] += time.process_time() - c0
            tick()
    return list(zip(times, cpu))


def _shard_calls(p: ShardPlan, queries: Sequence[Any]) -> tuple[float, float]:
    """Mean shard calls per query and lookups per shard call, from routing the queries."""
    router = p.router()
    calls = lookups = 0
    for indices, lengths in queries:
        work = router.route(indices, lengths=lengths).by_shard(router)
        calls += len(work)
        lookups += sum(len(item[2]) for items in work.values() for item in items)
    return calls / len(queries), lookups / max(calls, 1)


def iter_study(config: StudyConfig, status: Callable[[str], None] = lambda _m: None,
               tick: Callable[[], None] = lambda: None) -> Iterator[dict[str, Any]]:
    """Run the study, yielding one row per (strategy, backend) as it finishes (see
    :func:`run_study`). ``status`` gets a line about what runs next; ``tick`` is called
    after every timed query (for a progress bar)."""
    specs = study_tables(config)
    status(f"building {len(specs)} tables of {config.model} "
           f"({sum(t.nbytes for t in specs) / 2**20:.0f} MiB)")
    tables = [EmbeddingTable.random(t.num_rows, t.dim, seed=config.seed + i)
              for i, t in enumerate(specs)]
    queries = _queries(specs, config.queries + config.warmup, config.batch, config.seed + 1)
    plans = study_plans(config, specs)
    strategies = list(plans)
    base: dict[str, float] = {}
    tmp: Optional[tempfile.TemporaryDirectory[str]] = None
    # Shard calls depend on the plan and the queries only: routed once per strategy.
    calls_of: dict[str, tuple[float, float]] = {}

    def row(strategy: str, backend: str, rounds: list[tuple[list[float], float]]) -> dict[str, Any]:
        p = plans[strategy]
        times = [t for ts, _ in rounds for t in ts]
        cpu = sum(c for _, c in rounds)
        p50, p99 = _percentile(times, 50), _percentile(times, 99)
        p99_rounds = [_percentile(ts, 99) for ts, _ in rounds]
        if backend == "inprocess" and strategy == "singular":
            base.update(p99=p99, cpu=cpu, rounds=p99_rounds)  # type: ignore[arg-type]
        if strategy not in calls_of:
            calls_of[strategy] = _shard_calls(p, queries[config.warmup:])
        calls, per_call = calls_of[strategy]
        nbytes = p.shard_bytes()
        return {
            "model": config.model,
            "strategy": strategy,
            "backend": backend,
            "shards": p.num_shards,
            "batch": config.batch,
            "queries": len(times),
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3,
            "p99_overhead": p99 / base["p99"] if base else math.nan,
            # Each round's p99, and over singular's p99 of the same round (in process).
            "p99_ms_rounds": [x * 1e3 for x in p99_rounds],
            "p99_overhead_rounds": [x / b for x, b in zip(p99_rounds, base["rounds"])]
            if backend == "inprocess" and base else [],
            "compute_overhead": cpu / base["cpu"] if base and base["cpu"] > 0 else math.nan,
            "cpu_s": cpu,
            "shard_calls_per_query": calls,
            "lookups_per_shard_call": per_call,
            "shard_bytes": nbytes,
            "max_shard_mb": max(nbytes) / 2**20,
            "predicted_ms": p.predicted_latency_ms(config.batch),
            "splits": sorted({pl.split for pl in p.placements}),
        }

    try:
        for backend in config.backends:
            if backend == "inprocess":
                # Every strategy query by query: the comparison sees the same machine.
                status(f"inprocess: {', '.join(strategies)}, query by query")
                embs = [ShardedEmbedding(plans[s], tables) for s in strategies]
                # The warm-up queries run before the first round only.
                rounds = [_serve(embs, queries if r == 0 else queries[config.warmup:],
                                 config.warmup if r == 0 else 0, tick)
                          for r in range(config.repeats)]
                for k, strategy in enumerate(strategies):
                    yield row(strategy, backend, [r[k] for r in rounds])
                continue
            if tmp is None:
                tmp = tempfile.TemporaryDirectory(prefix="recengine-shard-")
                status("writing the tables for the shard actors")
                save_tables(tables, tmp.name, [t.name for t in specs])
            for strategy in strategies:
                p = plans[strategy]
                status(f"ray: {strategy} on {p.num_shards} shard actor(s)")
                threads = max(1, get_num_threads() // p.num_shards)
                with RayShardedEmbedding(p, Path(tmp.name), address=config.ray_address,
                                         num_cpus=config.ray_cpus, timeout_s=config.timeout_s,
                                         threads_per_shard=threads) as remote:
                    before = remote.cpu_seconds()
                    ((times, cpu),) = _serve([remote], queries, config.warmup, tick)
                    after = remote.cpu_seconds()
                yield row(strategy, backend,
                          [(times, cpu + sum(after[s] - before[s] for s in after))])
    finally:
        if tmp is not None:
            tmp.cleanup()


def run_study(config: StudyConfig) -> list[dict[str, Any]]:
    """All rows of the study: one per (strategy, backend), singular first in each backend.

    Each row has ``model``, ``strategy``, ``backend`` ("inprocess" | "ray"), ``p50_ms``,
    ``p99_ms``, ``p99_overhead`` and ``compute_overhead`` (ratios to singular in-process
    serving), ``shard_calls_per_query``, ``lookups_per_shard_call``, ``shard_bytes``,
    ``predicted_ms`` (the plan's cost model) and ``splits``."""
    return list(iter_study(config))


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The best sharded strategy per backend (lowest p99 over all rounds) and its overheads;
    in process also its p99 overhead's range over the rounds and how many rounds each
    strategy was the best in (one round is noise on a shared machine)."""
    out: dict[str, Any] = {}
    for backend in BACKENDS:
        mine = [r for r in rows if r["backend"] == backend and r["strategy"] != "singular"]
        if mine:
            best = min(mine, key=lambda r: r["p99_ms"])
            out[backend] = {"best": best["strategy"], "p99_overhead": best["p99_overhead"],
                            "compute_overhead": best["compute_overhead"]}
            spread = best.get("p99_overhead_rounds") or []
            if spread:
                n = len(spread)
                wins = [min(mine, key=lambda r: r["p99_ms_rounds"][k])["strategy"]
                        for k in range(n)]
                out[backend].update(p99_overhead_range=[min(spread), max(spread)], rounds=n,
                                    wins={r["strategy"]: wins.count(r["strategy"])
                                          for r in mine})
    return out


def plot_study(rows: Sequence[dict[str, Any]], path: str,
               config: Optional[StudyConfig] = None) -> None:
    """Latency per query (p50 bars, p99 markers) and the compute overhead over singular
    in-process serving (with its 1x line), per strategy and backend."""
    from ..studies._output import figure, save_figure

    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    fig, axes = figure(2, columns=2, size=(5.8, 4.2))
    width = 0.8 / max(len(backends), 1)
    x = np.arange(len(strategies))
    for k, b in enumerate(backends):
        by = {r["strategy"]: r for r in rows if r["backend"] == b}
        p50 = [by[s]["p50_ms"] if s in by else np.nan for s in strategies]
        p99 = [by[s]["p99_ms"] if s in by else np.nan for s in strategies]
        bars = axes[0].bar(x + k * width, p50, width, label=f"{b}: p50")
        axes[0].plot(x + k * width, p99, linestyle="none", marker="_", markersize=14,
                     markeredgewidth=2, color=bars.patches[0].get_facecolor(),
                     label=f"{b}: p99")
        axes[1].bar(x + k * width, [by[s]["compute_overhead"] if s in by else np.nan
                                    for s in strategies], width, label=b)
    axes[0].set_ylabel("latency per query (ms, log scale)")
    axes[0].set_yscale("log")
    axes[1].axhline(1.0, color="black", linewidth=0.8, linestyle="--",
                    label="singular in process")
    axes[1].set_ylabel("CPU time / singular in process (x, log scale)")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(_times_formatter())
    for ax, title in ((axes[0], "latency per query"), (axes[1], "compute overhead")):
        ax.set_xticks(x + width * (len(backends) - 1) / 2, strategies)
        ax.set_xlabel("planner")
        ax.set_title(title)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    model = rows[0]["model"] if rows else ""
    setting = model if config is None else (f"{config.model}, {config.shards} shards, "
                                            f"{config.queries} queries of batch "
                                            f"{config.batch}, {os.cpu_count()} CPUs")
    save_figure(fig, path, f"sharded serving: {setting}")


def _times_formatter() -> Any:
    """Tick labels of a ratio axis: 1x, 2x, 0.5x."""
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda v, _pos: f"{v:g}x")


def config_dict(config: StudyConfig) -> dict[str, Any]:
    d = asdict(config)
    d["strategies"], d["backends"] = list(config.strategies), list(config.backends)
    d["cpus"] = os.cpu_count()
    return d
