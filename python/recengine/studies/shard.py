"""``recengine shard``: one model's tables served singular and sharded by each planner, in
process and on Ray (:mod:`recengine.shard.study`)."""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, ClassVar, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a

__all__ = ["STUDY", "ShardStudy"]


class ShardStudy(Study):
    runner = "recengine.shard.study"
    name = "shard"
    help = "serve a model's tables sharded by each planner, in process and on Ray"
    description = (
        "Serve one DeepRecInfra model's embedding tables singular (one shard) and sharded "
        "by each planning strategy, in this process and on Ray (one actor per shard), "
        "from the same queries, and report p50/p99 latency per query, the p99 and compute "
        "overheads over singular in-process serving, the lookups each shard call carries "
        "and the bytes each shard holds.")
    options = (
        Option("--model", "the model (default: rmc1)", parse=a.model),
        Option("--shards", "shards for the sharded strategies (default: 4)",
               parse=a.int_in(1, 1024)),
        Option("--strategies", "comma list of planners (default: all: singular,capacity,load,"
                               "net,cost; singular is always run, as the baseline)",
               parse=a.comma_list(a.one_of("shard", "STRATEGIES"), "strategy")),
        Option("--backends", "comma list of inprocess, ray (default: both, or inprocess alone "
                             "where Ray is not installed)",
               parse=a.comma_list(a.one_of("shard.study", "BACKENDS"), "backend")),
        Option("--queries", "timed queries per strategy and backend (default: 300)",
               parse=a.positive_int),
        Option("--batch", "samples per query (default: 16)", parse=a.positive_int),
        Option("--table-mb", "scale the model's fp32 tables to about this many MiB (default: "
                             "128)", parse=a.positive_float),
        Option("--memory-mb", "per-shard memory cap for the planners (default: none)",
               parse=a.positive_float),
        Option("--seed", "seed of tables and queries", parse=a.seed),
        Option("--ray-address", "an existing Ray cluster's address (default: start a local "
                                "one)"),
        Option("--ray-cpus", "CPUs of the local Ray instance (default: all)",
               parse=a.positive_int),
        Option("--repeats", "rounds of the in-process queries; the best strategy comes with its "
                            "spread over them (default: 3)", parse=a.int_in(1, 100)),
        Option("--plans", "also print each strategy's plan", switch=True),
    )
    quick: ClassVar[Mapping[str, Any]] = {
        "model": "wnd", "shards": 2, "queries": 5, "table_mb": 4.0, "backends": ["inprocess"]}
    plot_help = "save a chart of latency and compute overhead per strategy"

    def __init__(self) -> None:
        self.show_plans = False

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        values = dict(values)
        self.show_plans = bool(values.pop("plans", False))
        if values.get("backends") is None:
            values["backends"] = ["inprocess"]
            if importlib.util.find_spec("ray"):
                values["backends"].append("ray")
            else:
                note('Ray is not installed (pip install "recengine[shard]"): in-process only')
        return super().configure(values, note)

    def total(self, config: Any) -> int:
        runs = len({"singular", *config.strategies})
        rounds = config.repeats if "inprocess" in config.backends else 0
        return runs * config.queries * (rounds + ("ray" in config.backends))

    def ticks(self) -> bool:
        return True

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        title = (f"{config.model}: {config.queries} queries of batch {config.batch}, "
                 f"{config.shards} shards; overheads over singular serving in process")
        body = [[r["strategy"], r["backend"], str(r["shards"]), f"{r['p50_ms']:.3f}",
                 f"{r['p99_ms']:.3f}", f"{r['p99_overhead']:.3f}x",
                 f"{r['compute_overhead']:.2f}x", f"{r['shard_calls_per_query']:.1f}",
                 f"{r['lookups_per_shard_call']:,.0f}", f"{r['max_shard_mb']:.1f}",
                 f"{r['predicted_ms']:.3f}", ",".join(r["splits"])] for r in rows]
        sections = [i for i in range(1, len(rows)) if rows[i]["backend"] != rows[i - 1]["backend"]]
        table = Table(title, ["strategy", "backend", "shards", "p50 ms", "p99 ms",
                              "p99 overhead", "compute overhead", "calls/query",
                              "lookups/call", "max shard MiB", "predicted ms", "splits"],
                      body, left=2, sections=sections)
        lines = []
        for backend, best in summary.items():
            spread = ""
            if "p99_overhead_range" in best:
                low, high = best["p99_overhead_range"]
                spread = (f" ({low:.3f}-{high:.3f}x over {best['rounds']} rounds, the best in "
                          f"{best['wins'][best['best']]} of them)")
            lines.append(f"best {backend}: {best['best']}, p99 {best['p99_overhead']:.3f}x "
                         f"singular in process{spread}, compute "
                         f"{best['compute_overhead']:.2f}x")
        if self.show_plans:
            from ..shard.study import study_plans
            lines += [p.describe(config.batch) for p in study_plans(config).values()]
        return Report(tables=[table], lines=lines)


STUDY = ShardStudy()
