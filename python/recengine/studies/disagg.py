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
        "the capacity lost meanwhile. Then DisaggRec's TCO study: the eight models' per-core "
        "rates measured here (dense part, the core's lookup kernel, RecNMP's speedup from "
        "the NMP emulator, bytes per query) with the RPC cost per query from the deployments, "
        "a fleet provisioned monolithic, disaggregated and disaggregated with NMP memory "
        "nodes over years of model growth (recengine.tco's documented cost inputs), the "
        "stranded share, a tornado of each input's effect and the break-even RPC cost.")
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
        Option("--no-tco", "skip the TCO sweep", dest="tco", switch=True),
        Option("--tco-models", "comma list of the TCO fleet's models, or all (default: all)",
               parse=a.comma_list(a.model_or_all, "model")),
        Option("--fleet-qps", "each model's peak load in the fleet's first year (default: "
                              "20000)", parse=a.positive_float),
        Option("--table-multiplier", "the fleet's tables over DeepRecInfra's full scale "
                                     "(default: 100)", parse=a.positive_float),
        Option("--years", "years of model growth (default: 3)", parse=a.int_in(1, 20)),
        Option("--table-growth", "yearly growth of the tables, 1.0 doubles (default: 1.0)",
               parse=a.float_in(0, 100)),
        Option("--compute-growth", "yearly growth of the dense work per query (default: 0.5)",
               parse=a.float_in(0, 100)),
        Option("--load-growth", "yearly growth of the peak load (default: 0)",
               parse=a.float_in(0, 100)),
        Option("--rpc-ms", "RPC cost per query in ms of a compute-node core (default: "
                           "measured from the deployments)", parse=a.float_in(0, 1e4)),
        Option("--kernel-mb", "MiB of the table the lookup rate is measured on (default: "
                              "256)", parse=a.float_in(1, 1e5)),
        Option("--set", "comma list of TCO inputs changed: costs.FIELD=VALUE (years, "
                        "electricity_usd_per_kwh, pue, dram_usd_per_gb, availability ...) or "
                        "NODE.FIELD=VALUE (NODE: monolithic, compute, memory, memory-nmp; "
                        "FIELD: cores, dram_gb, base_usd, idle_w, peak_w, nic_gbps, afr ...)",
               dest="settings", metavar="KEY=VALUE,...", parse=a.comma_list(str, "setting")),
        Option("--quick", "a run of about two minutes: rmc1 at scale 0.01, 60 queries a run, "
                          "8 s failure runs (options given still apply)", switch=True),
    )
    quick: ClassVar[Mapping[str, Any]] = {"model": "rmc1", "queries": 60,
                                          "failure_span_s": 8.0}
    needs: ClassVar[Mapping[str, str]] = {"ray": 'pip install "recengine[shard]"',
                                          "torch": 'pip install "recengine[torch]"'}
    plot_help = ("save max QPS per architecture, the capacity each failure took, the fleet's "
                 "TCO and stranded share by year and the tornado of the TCO inputs")

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        from ..workload import QuerySizes

        values = dict(values)
        if values.get("sizes"):
            values["sizes"] = QuerySizes.parse(values["sizes"])
        if values.pop("failures", False):
            values["failures"] = False
        if values.pop("tco", False):
            values["tco"] = False
        if values.get("tco_models"):
            values["tco_models"] = a.expand_all(values["tco_models"])
        return super().configure(values, note)

    def total(self, config: Any) -> int:
        per = {"monolithic": 2, "disaggregated": 3} if config.failures else {}
        tco = len(config.tco_models) + 1 if config.tco else 0
        return sum(per.get(arch, 1) for arch in config.architectures) + tco

    def ticks(self) -> bool:
        return True

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        deploy = [r for r in rows if r["kind"] == "deployment"]
        healthy = [r for r in deploy if r["failure"] is None]
        failures = [r for r in deploy if r["failure"] is not None]
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
        if summary.get("tco"):
            tables += _tco_tables(rows, summary, config)
            lines += _tco_lines(rows, summary)
        return Report(tables=tables, lines=lines)


def _pct(v: Any) -> str:
    return "infeasible" if v is None else f"{100 * v:+.1f}%"


def _tco_tables(rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> list[Table]:
    caps = [r for r in rows if r["kind"] == "capacity"]
    fleet = [r for r in rows if r["kind"] == "tco" and r["model"] == "fleet"]
    tornado = sorted((r for r in rows if r["kind"] == "sensitivity"),
                     key=lambda r: -(r["swing"] or 0.0))
    h = summary["tco"]
    lo, hi = h["disaggregated_nmp_saving_range"]
    return [
        Table("per-core rates measured here (RPC: "
              f"{1e3 * caps[0]['rpc_s']:.2f} ms a query, {caps[0]['rpc_source']})",
              ["model", "dense ms", "lookups M/s", "RecNMP x", "KB/query moved",
               "monolithic QPS/core", "compute QPS/core"],
              [[r["model"], f"{1e3 * r['dense_s']:.2f}", f"{r['lookup_rate'] / 1e6:.0f}",
                f"{r['nmp_speedup']:.1f}", f"{r['bytes_per_query'] / 1e3:,.0f}",
                f"{r['monolithic_qps_per_core']:,.0f}", f"{r['compute_qps_per_core']:,.0f}"]
               for r in caps], left=1),
        Table(f"the fleet: {len(caps)} models at {config.fleet_qps:,.0f} QPS each, tables "
              f"{config.table_multiplier:g}x full scale, tables x{1 + config.table_growth:g} "
              f"and dense work x{1 + config.compute_growth:g} a year",
              ["year", "architecture", "TCO $/year", "vs monolithic", "vs year-0 monolithic",
               "stranded", "nodes"],
              [[str(r["year"]), r["architecture"], f"{r['tco']:,.0f}",
                f"{r['tco_ratio_vs_monolithic']:.2f}x", f"{r['tco_vs_first_monolithic']:.2f}x",
                f"{r['stranded_fraction']:.0%}", str(r["nodes"])] for r in fleet], left=2),
        Table("against DisaggRec's figures",
              ["figure", "here", "DisaggRec"],
              [["monolithic TCO, last year over first (fleet; largest model)",
                f"{h['monolithic_growth_x']:.1f}x; {h['monolithic_growth_x_max']:.1f}x",
                "up to 12.4x"],
               ["monolithic purchase stranded (fleet; any model)",
                f"{h['monolithic_stranded_max']:.0%}; {h['monolithic_stranded_model_max']:.0%}",
                "up to 30%"],
               ["disaggregated saving over monolithic (3 years; best year or model)",
                f"{_pct(h['disaggregated_saving'])}; {_pct(h['disaggregated_saving_max'])}",
                "up to 49.3%"],
               ["with NMP memory nodes, saving by year (least to most)",
                f"{_pct(lo)} to {_pct(hi)}", "21% to 43.6%"]], left=1),
        Table("what moves the 3-year saving most (each input halved, doubled)",
              ["input", "architecture", "baseline", "x0.5", "x2"],
              [[r["input"], r["architecture"], _pct(r["baseline"]), _pct(r["saving_low"]),
                _pct(r["saving_high"])] for r in tornado[:8]], left=2),
    ]


def _tco_lines(rows: Sequence[dict[str, Any]], summary: Any) -> list[str]:
    out = []
    measured = next(r["measured_rpc_s"] for r in rows if r["kind"] == "break_even")
    for arch, rpc_s in summary["break_even_rpc_s"].items():
        if rpc_s is None:
            out.append(f"{arch} costs more than monolithic over the years even with free "
                       f"RPCs (here: {1e3 * measured:.2f} ms a query)")
        else:
            out.append(f"{arch} breaks even at an RPC cost of {1e3 * rpc_s:.2f} ms of a "
                       f"core a query (here: {1e3 * measured:.2f} ms)")
    grid = [r for r in rows if r["kind"] == "regime" and r["architecture"] == "disaggregated"]
    if grid:
        where = []
        for qps in sorted({r["fleet_qps"] for r in grid}):
            pays = sorted(r["table_multiplier"] for r in grid
                          if r["fleet_qps"] == qps and (r["saving"] or 0) > 0)
            where.append(f"{qps:,.0f} QPS: " + (f"tables >= {pays[0]:g}x" if pays else "never"))
        out.append("disaggregated pays (3-year TCO below monolithic) at " + "; ".join(where))
    return out


STUDY = DisaggStudy()
