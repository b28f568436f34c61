"""``recengine hercules``: Hercules' scheduling search per (model, server type) and its
heterogeneity-aware cluster provisioning (:mod:`recengine.hercules.study`)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a
from ._output import fmt_ratio

__all__ = ["STUDY", "HerculesStudy"]


def _pairs(value: Callable[[str], Any], what: str) -> Callable[[str], dict[str, Any]]:
    """``name=value,name=value`` as a dict."""

    def parse(text: str) -> dict[str, Any]:
        out = {}
        for item in (t.strip() for t in text.split(",") if t.strip()):
            name, sep, v = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{item!r} is not NAME={what}")
            out[name.strip()] = value(v.strip())
        if not out:
            raise ValueError(f"empty list of NAME={what}")
        return out

    return parse


def _watts(text: str) -> tuple[float, float]:
    idle, sep, peak = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} is not IDLE:PEAK (watts)")
    i, p = a.positive_float(idle), a.positive_float(peak)
    if i > p:
        raise ValueError(f"idle power {i:g} W is above peak {p:g} W")
    return i, p


def _gb(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


class HerculesStudy(Study):
    runner = "recengine.hercules.study"
    name = "hercules"
    help = "Hercules: search each server's schedule, then provision a heterogeneous cluster"
    description = (
        "Hercules' two stages. Stage 1: for each model and server type (CPU only, CPU + GPU, "
        "CPU + RecNMP), search the scheduling space (co-located instances, threads each, "
        "sub-request batch size, GPU offload threshold, sparse part on the CPU or RecNMP, "
        "instances as threads sharing one copy of the tables or as processes) for the "
        "highest latency-bounded throughput, in the serving simulator fed by latency curves "
        "profiled here with co-located workers busy, and compare the gradient search with the "
        "exhaustive grid, DeepRecSched and the naive schedule (one instance, all cores, whole "
        "queries). Stage 2: provision servers of each type for every model's diurnal load "
        "with the fewest servers or the least peak power (an integer program), against a "
        "greedy and a heterogeneity-oblivious scheduler.")
    options = (
        Option("--model", "model, comma list, or 'all' (default: all)", dest="models",
               parse=a.comma_list(a.model_or_all, "model")),
        Option("--servers", "server types, comma list of cpu, cpu-gpu, cpu-nmp (default: "
                            "all three)", parse=a.comma_list(
                                a.one_of("hercules.study", "SERVER_TYPES"), "server type")),
        Option("--scale", "table row factor of the profiled models (default: 0.05); memory "
                          "footprints are reported at full scale", parse=a.positive_float),
        Option("--cores", "cores of the profiled server (default: this machine's)",
               parse=a.positive_int),
        Option("--memory-gb", "memory of each server; schedules whose full-scale copies of "
                              "the model do not fit are ruled out (default: 128)",
               parse=a.positive_float),
        Option("--profiles", "read the CPU profiles (and RecNMP curves) from this file, as "
                             "--save-profiles wrote it, instead of profiling here",
               metavar="FILE"),
        Option("--save-profiles", "write the profiles to this file", metavar="FILE"),
        Option("--profile-span", "seconds of queries per batch size and profile (default: "
                                 "0.25)", dest="profile_span_s", parse=a.positive_float),
        Option("--threads-only", "profile co-located instances as threads only (faster; "
                                 "processes are then assumed to run as threads do)",
               switch=True),
        Option("--gpu-curves", "JSON {model: {batches, ms}} of the GPU's whole-query latency "
                               "(default: the H200's, shipped with recengine)", metavar="FILE"),
        Option("--gpu-dense-curves", "JSON {model: {batches, ms}} of the GPU's time for the "
                                     "dense part alone, for schedules with the lookups on the "
                                     "CPU and the dense part on the GPU (default: the H200's, "
                                     "shipped with recengine)", metavar="FILE"),
        Option("--nmp-system", "RecNMP configuration of the cpu-nmp servers (default: recnmp)",
               choices=("recnmp", "recnmp-2x2")),
        Option("--nmp-table-mb", "tables' size in the RecNMP emulation (default: 256)",
               parse=a.positive_float),
        Option("--sls-fraction", "share of a CPU sub-request's time in SLS, which RecNMP "
                                 "speeds up, where a profile has no measured share (default: "
                                 "0.79)", parse=a.float_in(0, 1)),
        Option("--batch-sizes", "batch sizes of the search's lattice (default: 32 to 1024)",
               parse=a.comma_list(a.positive_int, "batch size")),
        Option("--thresholds", "GPU offload thresholds of the lattice (default: 1 to 1024)",
               parse=a.comma_list(a.positive_int, "threshold")),
        Option("--no-grid", "skip the exhaustive grid (no gap to the optimum)", switch=True),
        Option("--tolerance", "relative gain a search move must beat (default: 0: the "
                              "simulator is deterministic)", parse=a.float_in(0, 1)),
        Option("--sizes", "query sizes: lognormal:MU,SIGMA, normal:MEAN,SD, fixed:N or a "
                          "percentile file (default: lognormal:5.1,0.2)", metavar="SPEC"),
        Option("--queries", "queries per simulated run at least (default: 1000)",
               parse=a.int_in(10, 10**6)),
        Option("--target-scale", "multiply every model's DeepRecInfra p95 target (default: 1)",
               parse=a.positive_float),
        Option("--peak-servers", "each model's peak load, in CPU-only servers' worth of its "
                                 "best throughput (default: 20)", parse=a.positive_float),
        Option("--phase-spread", "hours between successive models' peaks (default: 3; 0: "
                                 "all at once)", parse=a.float_in(0, 24)),
        Option("--trough", "the diurnal trough as a fraction of the peak (default: 0.35)",
               parse=a.float_in(1e-3, 1)),
        Option("--slots", "time slots of the day (default: 24)", parse=a.int_in(2, 1440)),
        Option("--headroom", "spare capacity over each slot's load (default: 0.1)",
               parse=a.float_in(0, 9)),
        Option("--available", "servers of a type, e.g. cpu-gpu=16,cpu-nmp=32 (default: 2 "
                              "CPU + GPU and 4 CPU + NMP per model, CPU-only unlimited)",
               parse=_pairs(a.positive_int, "COUNT")),
        Option("--max-switches", "the most servers newly assigned between slots (default: "
                                 "no limit)", parse=a.int_in(0, 10**9)),
        Option("--power", "override a type's power, e.g. cpu=98:242 (idle:peak W)",
               parse=_pairs(_watts, "IDLE:PEAK")),
        Option("--check", "serve the chosen cpu (and, with CUDA, cpu-gpu) schedule of these "
                          "models on the real server here and report measured QPS and memory",
               parse=a.comma_list(a.model, "model")),
        Option("--seed", "seed of weights and workload", parse=a.seed),
        Option("--quick", "a run of about a minute: ncf at scale 0.01, a small lattice, short "
                          "profiles (options given still apply)", switch=True),
    )
    quick: ClassVar[Mapping[str, Any]] = {
        "models": ["ncf"], "scale": 0.01, "profile_batches": [1, 32, 128, 1024],
        "profile_span_s": 0.05, "batch_sizes": [32, 64, 128, 1024],
        "thresholds": [64, 128, 256], "nmp_table_mb": 8.0, "queries": 300}
    needs: ClassVar[Mapping[str, str]] = {"torch": 'pip install "recengine[torch]"',
                                          "scipy": 'pip install "recengine[hercules]"'}
    plot_help = "save each schedule's gain over the naive one, and servers over the day"

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        from ..workload import QuerySizes

        values = dict(values)
        values["models"] = a.expand_all(values.pop("models", None))
        if values.get("sizes"):
            values["sizes"] = QuerySizes.parse(values["sizes"])
        return super().configure(values, note)

    def total(self, config: Any) -> int:
        return len(config.models) * len(config.servers)

    def ticks(self) -> bool:
        return True

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        stage1 = [r for r in rows if r["kind"] == "schedule"]
        cluster = [r for r in rows if r["kind"] == "cluster"]
        cores = stage1[0]["cores"] if stage1 else config.cores
        header = [f"Stage 1: latency-bounded throughput on a {cores}-core server (simulated "
                  f"from profiles with co-located workers busy; {config.sizes.describe()} "
                  f"items, p95 at each model's DeepRecInfra target x{config.target_scale:g})"]
        checked = any(r.get("real_qps") is not None for r in stage1)
        cols = ["model", "server", "chosen schedule", "QPS", "grid best", "gap", "evals",
                "grid evals", "DeepRecSched", "naive", "gain over naive", "memory GB",
                "as processes GB"] + (["real QPS", "real vs predicted"] if checked else [])
        body = []
        for r in stage1:
            c = r["config"]
            sched = (f"{c['instances']}x{c['threads']}, b{c['batch_size']}"
                     + (f", off>={c['offload_threshold']}"
                        if c.get("offload_threshold") is not None else "")
                     + (", nmp" if c.get("sparse") == "nmp" else "")
                     + f", {c['sharing']}")
            line = [r["model"], r["server"], sched, f"{r['qps']:,.0f}",
                    "-" if r["grid_best_qps"] is None else f"{r['grid_best_qps']:,.0f}",
                    "-" if r["gap"] is None else f"{r['gap']:.1%}", str(r["evaluations"]),
                    str(r["grid_evaluations"]), f"{r['deeprecsched_qps']:,.0f}",
                    f"{r['naive_qps']:,.0f}", fmt_ratio(r["gain_over_naive"]),
                    _gb(r["memory_gb"]), _gb(r["memory_gb_processes"])]
            if checked:
                line += ["-" if r.get("real_qps") is None else f"{r['real_qps']:,.0f}",
                         "-" if r.get("real_gap") is None else f"{r['real_gap']:+.1%}"]
            body.append(line)
        tables = [Table("", cols, body, left=3)]
        if cluster:
            t = Table(f"Stage 2: {config.slots} slots a day, peaks of {config.peak_servers:g} "
                      f"CPU servers' worth per model, {config.headroom:.0%} headroom",
                      ["objective", "scheduler", "servers (mean)", "peak servers",
                       "provisioned W", "energy kWh/day", "servers saved", "power saved",
                       "switches/hour"],
                      [[r["objective"], r["scheduler"], f"{r['capacity']:.1f}",
                        str(r["peak_servers"]), f"{r['power_w']:,.0f}",
                        f"{r['energy_kwh']:,.1f}", f"{r['capacity_saving']:.1%}",
                        f"{r['power_saving']:.1%}", f"{r['switches_per_hour']:.2f}"]
                       for r in cluster], left=2,
                      sections=[i for i in range(1, len(cluster))
                                if cluster[i]["objective"] != cluster[i - 1]["objective"]])
            tables.append(t)
        lines = []
        if summary.get("compared"):
            lines.append(f"search within 2% of the grid on {summary['within_2pct']} of "
                         f"{summary['compared']} (worst gap {summary['worst_gap']:.1%}), at "
                         f"most {summary['most_evaluations_share']:.0%} of its evaluations")
        if summary.get("best_gain_over_naive"):
            lines.append(f"gain over the naive schedule: up to "
                         f"{summary['best_gain_over_naive']:.1f}x (Hercules reports up to "
                         f"9.0x)")
        if "capacity_saving_capacity" in summary:
            lines.append(f"Hercules over greedy: {summary['capacity_saving_capacity']:.1%} "
                         f"fewer servers, {summary['power_saving_power']:.1%} less "
                         f"provisioned power (Hercules reports 47.7% and 23.7%)")
        for r in stage1:
            if r.get("real_accel_ms") is not None:
                lines.append(f"{r['model']} on {r['server']}, real server: the accelerator "
                             f"took {r['real_accel_ms']:.2f} ms per offloaded query (its "
                             f"curve: {r['curve_accel_ms']:.2f} ms)")
            if r.get("real_note"):
                lines.append(f"{r['model']} on {r['server']}, real server: not served "
                             f"({r['real_note']})")
        return Report(header=header, tables=tables, lines=lines)


STUDY = HerculesStudy()
