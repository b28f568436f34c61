"""``recengine serve``: DeepRecSched against a static baseline, on the real server here or in
the simulator at any core count (:mod:`recengine.serving.study`)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a
from ._output import fmt_ratio

__all__ = ["STUDY", "ServeStudy"]


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


class ServeStudy(Study):
    runner = "recengine.serving.study"
    name = "serve"
    help = "serve a model under a query stream: DeepRecSched vs a static baseline"
    description = (
        "Serve one of the DeepRecInfra models under Poisson queries of lognormal sizes and "
        "find the latency-bounded throughput (the highest QPS whose p95 meets the model's "
        "target) of a static baseline and of DeepRecSched (tuned batch size and accelerator "
        "offload threshold): on the real server on this machine's cores, or with --simulate "
        "in a discrete-event simulator fed by this machine's profiled latency curve at any "
        "core count.")
    options = (
        Option("--model", "model, comma list, or 'all' (default: rmc1)", dest="models",
               parse=a.comma_list(a.model_or_all, "model")),
        Option("--simulate", "run the simulator instead of the real server", switch=True),
        Option("--processes", "one process per worker, each with its own copy of the model, "
                              "instead of threads sharing one interpreter lock (scales past a "
                              "few cores; a few seconds to start)", switch=True),
        Option("--profile-workers", "with --simulate: profile the latency curve with this many "
                                    "workers busy at once, so it carries their contention for "
                                    "memory bandwidth, caches and clock (default: 1, none)",
               parse=a.positive_int),
        Option("--profile-loads", "with --simulate: profile the latency curve at these "
                                  "fractions of the workers' capacity (comma list, increasing, "
                                  "default: 0.9); with several, each simulated run takes the "
                                  "curve of the load it puts on the cores, interpolated "
                                  "between them (workers that slow each other down the busier "
                                  "they are, e.g. 0.3,0.6,0.9)",
               parse=a.comma_list(a.positive_float, "load")),
        Option("--service-times", "with --simulate: give every sub-request the profiled median "
                                  "time for its size ('median', the default) or draw it from "
                                  "the spread the profile saw ('profiled': the tail that sets "
                                  "a tight target's p95, and any slow stretch of the profile "
                                  "with it)", choices=("median", "profiled")),
        Option("--search", "how each policy's latency-bounded QPS is found: bracket and "
                           "bisect the rate over runs at fixed rates ('bisect', the default), "
                           "or DeepRecSys's controller, which steps the rate of one long run "
                           "on the p95 of every 64 completed queries ('controller')",
               choices=("bisect", "controller")),
        Option("--confirm", "real server: run a rate that misses the target this many more "
                            "times before the search counts it as a miss, so that one slow "
                            "stretch does not end a search low (default: 1)",
               parse=a.int_in(0, 100)),
        Option("--cores", "cores (comma list with --simulate; default: this machine's)",
               parse=a.comma_list(a.core_count, "core count")),
        Option("--scale", "table row factor (default: 0.05, all eight models under 2 GB)",
               parse=a.positive_float),
        Option("--target-ms", "p95 target in ms (default: the model's DeepRecInfra target)",
               parse=a.positive_float),
        Option("--target-scale", "multiply every model's DeepRecInfra target (DeepRecSys "
                                 "sweeps low, medium and high targets; default: 1)",
               parse=a.positive_float),
        Option("--static-batch", "the static baseline's batch size: every query split into "
                                 "sub-requests of this many items (default: 32, DeepRecInfra's "
                                 "fixed per-core batch; 1024 runs every query whole). The gain "
                                 "over whole queries is printed too", parse=a.positive_int),
        Option("--batch-sizes", "DeepRecSched's batch sizes in the order tried (default: "
                                "1024,512,384,256,192,128,96,64,48,32)",
               parse=a.comma_list(a.positive_int, "batch size")),
        Option("--patience", "stop DeepRecSched's climb after this many non-improving tries "
                             "past a drop (DeepRecSys stops at the first drop: 0; default: try "
                             "all)", parse=a.int_in(0, 1000)),
        Option("--accelerator", "offload target: a CUDA device (real server) or a latency "
                                "model (--accelerator-curves) (default: none)",
               choices=("none", "cuda", "modeled")),
        Option("--accelerator-curves", "JSON {model: {batches, ms}} of the modeled "
                                       "accelerator", metavar="FILE"),
        Option("--sizes", "query sizes: lognormal:MU,SIGMA, normal:MEAN,SD, fixed:N or a "
                          "percentile file (default: lognormal:5.1,0.2)", metavar="SPEC"),
        Option("--size-percentiles", "query sizes from this percentile file (the same as "
                                     "--sizes FILE)", metavar="FILE"),
        Option("--arrivals", "arrival process: exponential gaps, whole-millisecond gaps, or a "
                             "diurnal rate curve (default: poisson)", dest="process",
               choices=("poisson", "poisson-ms", "diurnal")),
        Option("--distribution", "rows the model's inputs read; movielens needs the recbole "
                                 "wheel (default: uniform)",
               choices=("uniform", "zipf", "pareto", "production", "movielens")),
        Option("--queries", "queries per run at least (default: 2000 simulated, 300 real)",
               parse=a.int_in(0, 10**7)),
        Option("--seed", "seed of weights and workload", parse=a.seed),
        Option("--repeats", "profile and search this many times per model and core count, "
                            "report the repeat of the median gain and the spread of the gains "
                            "(each profile carries the machine's noise; default: 1)",
               parse=a.int_in(1, 100)),
    )
    quick: ClassVar[Mapping[str, Any]] = {
        "simulate": True, "models": ["ncf"], "cores": [4], "scale": 0.01,
        "batch_sizes": [1024, 64], "queries": 200}
    needs: ClassVar[Mapping[str, str]] = {"torch": 'pip install "recengine[torch]"'}
    plot_help = "save latency-bounded QPS against batch size per model"

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        from ..workload import QuerySizes

        values = dict(values)
        values["models"] = a.expand_all(values.pop("models", None))
        spec, percentiles = values.pop("sizes", None), values.pop("size_percentiles", None)
        if spec and percentiles:
            raise ValueError("give --sizes or --size-percentiles, not both")
        if spec or percentiles:
            values["sizes"] = (QuerySizes.parse(spec) if spec else
                               QuerySizes.from_percentiles(percentiles))
        values["simulate"] = values.get("simulate") or None
        values["processes"] = values.get("processes") or None
        return super().configure(values, note)

    def total(self, config: Any) -> int:
        from ..sched import THRESHOLDS
        tries = len(config.batch_sizes) + 1 + (
            len(THRESHOLDS) + 1 if config.accelerator != "none" else 0)
        return len(config.models) * len(config.cores) * tries * config.repeats

    def ticks(self) -> bool:
        return True

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        workers = "worker processes" if config.processes else "worker threads"
        times = ("service times drawn from the profile" if config.service_times == "profiled"
                 else "median service times")
        if len(config.profile_loads) > 1:
            times += (f", curves by load (profiled at "
                      f"{', '.join(f'{x:g}' for x in config.profile_loads)})")
        mode = (f"real server, {workers}" if not config.simulate else f"simulated, {times}" if
                config.profile_workers == 1 else
                f"simulated from a profile of {config.profile_workers} {workers}, {times}")
        search = ("DeepRecSys's running-p95 controller" if config.search == "controller"
                  else "bisection")
        header = [
            f"latency-bounded throughput ({mode}; rates by {search}; {config.process} "
            f"arrivals, {config.sizes.describe()} items, {config.distribution} rows, scale "
            f"{config.scale:g})",
            f"static baseline: every query split into sub-requests of {config.static_batch} "
            f"items; DeepRecSched: the batch size (and offload threshold) it tuned; "
            f"'gain over whole': DeepRecSched's QPS over running every query whole"]
        body = [[r["model"], str(r["cores"]), f"{r['target_ms']:g}", f"{r['static_qps']:,.0f}",
                 f"{r['deeprecsched_qps']:,.0f}", fmt_ratio(r["improvement"]),
                 fmt_ratio(r["gain_over_whole"]), str(r["batch_size"]),
                 "-" if r["offload_threshold"] is None else f">={r['offload_threshold']}",
                 _ms(r["p50_ms"]), _ms(r["p95_ms"]), _ms(r["p99_ms"])] for r in rows]
        table = Table("", ["model", "cores", "p95 target ms", "static QPS",
                           "DeepRecSched QPS", "gain over static", "gain over whole",
                           "DeepRecSched batch", "offload", "p50 ms", "p95 ms", "p99 ms"], body)
        lines = []
        ratios = [r["improvement"] for r in rows if r["improvement"]]
        over_whole = [r for r in rows if r["gain_over_whole"]]
        spread = [g for g in summary.get("mean_improvement_repeats") or () if g]
        if len(ratios) > 1 or len(spread) > 1:
            whole = (f"; {summary['mean_gain_over_whole']:.2f}x over whole queries "
                     f"({len(over_whole)} runs)" if over_whole else "")
            noise = (f" (each the median of {len(spread)} repeats; one repeat's mean ranges "
                     f"{min(spread):.2f}-{max(spread):.2f}x)" if len(spread) > 1 else "")
            lines.append(f"mean gain over static {summary['mean_improvement']:.2f}x over "
                         f"{len(ratios)} runs{noise}{whole}")
        if len(config.models) > 1:
            lines.append("mean gain over one static batch size for every model (-: that size "
                         "meets no rate for some model):")
            for c, sw in summary["gain_over_one_static_batch"].items():
                lines.append(f"  {c} cores: " + ", ".join(f"{b} {fmt_ratio(g)}"
                                                          for b, g in sw.items()))
        unserved = [r for r in rows if r["static_qps"] == 0 and r["deeprecsched_qps"] > 0]
        if unserved:
            lines.append(f"the static baseline meets the target at no rate in {len(unserved)} "
                         f"run(s) ({', '.join(sorted({r['model'] for r in unserved}))}); "
                         f"DeepRecSched serves them")
        if config.simulate and config.repeats == 1:
            lines.append("one profile per model: its noise is in these gains (--repeats 3 "
                         "gives their spread over profiles)")
        return Report(header=header, tables=[table], lines=lines)


STUDY = ServeStudy()
