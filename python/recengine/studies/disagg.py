"""``recengine disagg``: DisaggRec's deployments on Ray, monolithic against disaggregated at
equal cores, with nodes killed mid-stream (:mod:`recengine.disagg.study`)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a

__all__ = ["STUDY", "DisaggStudy"]


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


class DisaggStudy(Study):
    runner = "recengine.disagg.study"
    name = "disagg"
    help = "DisaggRec: serve a model monolithic and disaggregated on Ray, and kill nodes"
    description = (
        "Deploy one DeepRecInfra model on Ray at equal cores as monolithic nodes (each holds "
        "the whole model) and as DisaggRec's disaggregated cluster (compute nodes run the "
        "dense part, memory nodes hold the tables as the sharding planner placed them), find "
        "each one's highest Poisson rate whose p95 meets the model's DeepRecInfra target, "
        "with p50/p99 and the bytes each query moves between compute and memory nodes; then "
        "kill a memory node's and a compute node's actor mid-stream and account for every "
        "query (served, sent again, shed, failed), the time the node took to come back and "
        "the capacity lost meanwhile.")
    options = (
        Option("--model", "the model (default: rmc1)", parse=a.model),
        Option("--scale", "table row factor (default: 0.01)", parse=a.positive_float),
        Option("--cores", "node threads of each deployment in all (default: this machine's "
                          "cores)", parse=a.int_in(1, 1024)),
        Option("--compute-nodes", "the disaggregated deployment's compute nodes; the other "
                                  "cores are memory nodes (default: half the cores)",
               parse=a.int_in(1, 1023)),
        Option("--replicas", "actors per memory node (default: 1)", parse=a.int_in(1, 8)),
        Option("--strategy", "the sharding planner's strategy for the memory nodes (default: "
                             "load)", parse=a.one_of("shard", "STRATEGIES")),
        Option("--architectures", "comma list of monolithic, disaggregated (default: both)",
               parse=a.comma_list(a.one_of("disagg", "ARCHITECTURES"), "architecture")),
        Option("--sizes", "query sizes: lognormal:MU,SIGMA, normal:MEAN,SD, fixed:N or a "
                          "percentile file (default: lognormal:5.1,0.2)", metavar="SPEC"),
        Option("--queries", "queries per run at least (default: 300)",
               parse=a.int_in(10, 10**6)),
        Option("--target-scale", "multiply the model's DeepRecInfra p95 target (default: 1)",
               parse=a.positive_float),
        Option("--no-failures", "skip the runs with a node killed", dest="failures",
               switch=True),
        Option("--failure-load", "the failure runs' rate as a share of the max QPS (default: "
                                 "0.6)", parse=a.float_in(1e-3, 1)),
        Option("--failure-span", "seconds of queries in a failure run (default: 15)",
               dest="failure_span_s", parse=a.positive_float),
        Option("--timeout", "a query's deadline in seconds (default: 5)", dest="timeout_s",
               parse=a.positive_float),
        Option("--seed", "seed of weights and workload", parse=a.seed),
        Option("--quick", "a run of about two minutes: rmc1 at scale 0.01, 60 queries a run, "
                          "8 s failure runs (options given still apply)", switch=True),
    )
    quick: ClassVar[Mapping[str, Any]] = {"model": "rmc1", "queries": 60,
                                          "failure_span_s": 8.0}
    needs: ClassVar[Mapping[str, str]] = {"ray": 'pip install "recengine[shard]"',
                                          "torch": 'pip install "recengine[torch]"'}
    plot_help = "save max QPS per architecture and the capacity each failure took"

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        from ..workload import QuerySizes

        values = dict(values)
        if values.get("sizes"):
            values["sizes"] = QuerySizes.parse(values["sizes"])
        if values.pop("failures", False):
            values["failures"] = False
        return super().configure(values, note)

    def total(self, config: Any) -> int:
        per = {"monolithic": 2, "disaggregated": 3} if config.failures else {}
        return sum(per.get(arch, 1) for arch in config.architectures)

    def ticks(self) -> bool:
        return True

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        healthy = [r for r in rows if r["failure"] is None]
        failures = [r for r in rows if r["failure"] is not None]
        tables = [Table(
            f"{config.model} on {config.cores} cores: max QPS at p95 <= {config.target_ms:g} "
            f"ms ({config.sizes.describe()} items)",
            ["architecture", "nodes", "QPS", "p50 ms", "p99 ms", "KB/query moved"],
            [[r["architecture"], r["layout"], f"{r['qps']:,.0f}", _ms(r["p50_ms"]),
              _ms(r["p99_ms"]), f"{(r['bytes_per_query'] or 0) / 1e3:,.1f}"]
             for r in healthy], left=2)]
        if failures:
            tables.append(Table(
                "a node killed a third into the run",
                ["architecture", "killed", "QPS offered", "queries", "served", "sent again",
                 "shed", "failed", "back after s", "capacity lost"],
                [[r["architecture"], r["failure"], f"{r['qps']:,.0f}", str(r["queries"]),
                  str(r["served"]), str(r["retried"]), str(r["shed"]), str(r["failed"]),
                  "not back" if r["outage_s"] is None else f"{r['outage_s']:.1f}",
                  "-" if r["capacity_lost"] is None else f"{r['capacity_lost']:.0%}"]
                 for r in failures], left=2))
        lines = []
        if summary.get("qps_ratio") is not None:
            lines.append(f"disaggregated serves {summary['qps_ratio']:.2f}x the monolithic "
                         f"QPS at equal cores")
        if failures:
            lines.append(f"every query accounted for: {summary['accounted']}; lost (shed or "
                         f"failed): {summary['lost_queries']}")
        return Report(tables=tables, lines=lines)


STUDY = DisaggStudy()
