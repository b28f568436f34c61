"""``recengine nmp``: SparseLengthsSum on a DDR4 host against RecNMP's near-memory units
(:mod:`recengine.nmp.study`)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a

__all__ = ["STUDY", "NMPStudy"]


class NMPStudy(Study):
    runner = "recengine.nmp.study"
    name = "nmp"
    help = "emulate SLS on a DDR4 host vs on RecNMP near-memory units"
    description = (
        "Emulate one model's SparseLengthsSum lookups on the DDR4 host and on RecNMP "
        "(rank-level NMP units, RankCache, hot-entry profiling, table-aware scheduling), "
        "over a stream of batches (RankCaches warm across batches, hot entries profiled per "
        "batch), sweeping ranks, cache size, locality, co-location, scheduling, profiling, the "
        "eight DeepRecInfra models, vector size, background power and SLS share, and report "
        "memory-latency speedup, end-to-end throughput speedup and energy saving.")
    options = (
        Option("--model", "the model (default: rmc1)", parse=a.model),
        Option("--batch", "samples per batch (default: 64)", parse=a.positive_int),
        Option("--batches", "batches in each stream; RankCaches stay warm across them "
                            "(default: 8)", parse=a.positive_int),
        Option("--table-mb", "scale the model's tables to about this many MiB (default: 256)",
               parse=a.positive_float),
        Option("--zipf", "locality: Zipf exponent over each table's rows, or the Pareto shape "
                         "(default: 1.0)", parse=a.float_in(0, 1e6)),
        Option("--distribution", "row distribution of the model's traces (default: zipf)",
               choices=("uniform", "zipf", "pareto", "production")),
        Option("--trace", "emulate this trace (.npz from Trace.save, or CSV/text with columns "
                          "table,row[,bag][,model][,batch]) instead of the model's batches",
               metavar="FILE"),
        Option("--sls-fraction", "share of inference time in SLS on the host, for the "
                                 "throughput speedup (default: 0.79)", parse=a.float_in(0, 1)),
        Option("--sweeps", "comma list of ranks, cache, locality, colocation, scheduling, "
                           "profiling, models, vector, energy, sls_fraction (default: all)",
               parse=a.comma_list(a.one_of("nmp.study", "SWEEPS"), "sweep")),
        Option("--system", "the configuration each row changes one setting of: recnmp (the "
                           "paper's, 4 DIMMs x 2 ranks a channel; default) or recnmp-2x2",
               choices=("recnmp", "recnmp-2x2")),
        Option("--timing", "DRAM timing: fast (default; within 3%% of the command model) or "
                           "command (every ACT/RD/PRE scheduled, the reference)",
               choices=("fast", "command")),
        Option("--preset", "run only the starting configuration (--system)",
               choices=("recnmp",)),
        Option("--vector-bytes", "bytes of an embedding vector (default: the model's fp32 "
                                 "rows, 128 for a trace file)", parse=a.positive_int),
        Option("--seed", "seed of the traces", parse=a.seed),
    )
    quick: ClassVar[Mapping[str, Any]] = {"model": "ncf", "batch": 8, "batches": 2,
                                          "table_mb": 4.0}
    plot_help = "save latency speedup and energy saving per sweep"

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        values = dict(values)
        values["preset_only"] = values.pop("preset", None) == "recnmp" or None
        return super().configure(values, note)

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        source = config.trace or f"{config.model}, {config.distribution} rows ({config.zipf})"
        title = (f"{source}: streams of {config.batches} batches of {config.batch} samples, SLS "
                 f"{config.sls_fraction:.0%} of host time; {config.system}, "
                 f"{config.timing} DRAM timing")
        body = [[r["sweep"], r["config"].split(":", 1)[-1], f"{r['lookups']}",
                 f"{r['host_latency_us']:.1f}", f"{r['nmp_latency_us']:.1f}",
                 f"{r['latency_speedup']:.2f}x", f"{r['throughput_speedup']:.2f}x",
                 f"{r['energy_saving']:.1%}",
                 f"{r['cold_hit_rate']:.0%} -> {r['warm_hit_rate']:.0%}"] for r in rows]
        sections = [i for i in range(1, len(rows)) if rows[i]["sweep"] != rows[i - 1]["sweep"]]
        table = Table(title, ["sweep", "setting", "lookups a batch", "host us", "RecNMP us",
                              "latency speedup", "throughput speedup", "energy saved",
                              "cache hits 1st -> last"], body, sections=sections)
        lines = []
        if summary.get("best"):
            lines.append(f"best: {summary['best']}, latency {summary['best_latency_speedup']:.2f}x"
                         " the host's")
        return Report(tables=[table], lines=lines)


STUDY = NMPStudy()
