"""``recengine bench``: the DeepRecInfra models' embedding stage, recengine against torch and
numpy on the same tables, indices and threads (:mod:`recengine.bench`)."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional, Sequence

from . import Option, Report, Study, Table
from . import _args as a
from ._output import fmt_ratio

__all__ = ["STUDY", "BenchStudy", "cpus_busy"]


def _fmt_rate(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 1e6:,.1f}"


def _fmt_pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _fmt_num(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def _fmt_bool(v: Optional[bool]) -> str:
    return "-" if v is None else ("yes" if v else "NO")


#: The results table: header, row key, formatter.
_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("model", "model", str),
    ("batch", "batch", str),
    ("dtype", "dtype", str),
    ("op", "op", str),
    ("lookups", "lookups", lambda v: f"{v:,}"),
    ("recengine", "recengine_lookups_per_s", _fmt_rate),
    ("torch", "torch_lookups_per_s", _fmt_rate),
    ("numpy", "numpy_lookups_per_s", _fmt_rate),
    ("vs torch", "ratio_vs_torch", fmt_ratio),
    ("vs numpy", "ratio_vs_numpy", fmt_ratio),
    ("modules vs torch", "ratio_modules_vs_torch", fmt_ratio),
    ("GB/s", "recengine_gb_per_s", _fmt_num),
    ("of probe", "probe_fraction", _fmt_pct),
    ("ok", "correct", _fmt_bool),
]


def cpus_busy(seconds: float = 0.3) -> Optional[float]:
    """How many CPUs' worth of time the machine spent busy over ``seconds`` while this process
    slept (Linux ``/proc/stat``), i.e. what other processes use; None where unknown."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0)


def _loadavg() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _version(module: str) -> Optional[str]:
    mod = sys.modules.get(module)
    return getattr(mod, "__version__", None) if mod is not None else None


def _summary_lines(summary: dict[str, Any], judge: bool) -> list[tuple[str, str]]:
    """The summary as (metric, value) lines; ``judge``: say whether each target is met."""

    def spread(s: dict[str, Any], fmt: Callable[[Optional[float]], str]) -> str:
        if not s or not s.get("n"):
            return "-"
        return (f"geomean {fmt(s['geomean'])}, min {fmt(s['min'])} ({s['min_at']}), "
                f"max {fmt(s['max'])}, n={s['n']}")

    per_op = summary.get("per_op") or {}
    lines = []
    if "pool" in per_op or not per_op:
        lines += [
            ("pool fp32 vs torch, batch >= 64",
             spread(summary["ratio_vs_torch_large_batch"], fmt_ratio)),
            ("pool fp32 vs torch, batch <= 16",
             spread(summary["ratio_vs_torch_small_batch"], fmt_ratio)),
            ("pool int8 vs torch (int8 op)", spread(summary["ratio_vs_torch_int8"], fmt_ratio)),
            ("pool recengine int8 / fp32 lookups/s",
             spread(summary["int8_over_fp32"], fmt_ratio)),
        ]
        for dtype, s in summary["probe_fraction_batch_1024"].items():
            lines.append((f"pool {dtype} fraction of probe, batch 1024", spread(s, _fmt_pct)))
    groups = (("large_batch", "batch >= 64"), ("small_batch", "batch <= 16"),
              ("all", "all batches"))
    for op, o in per_op.items():
        if op == "pool":
            continue
        targets = {t["group"]: t for t in o["targets"]}
        for group, label in groups:
            name, value = f"{op} vs torch, {label}", spread(o[group], fmt_ratio)
            t = targets.get(group)
            if t is not None:
                name += f" (target >= {t['target']:g}x)"
                if judge and t["met"] is not None:
                    value += ": target met" if t["met"] else ": target NOT met"
            lines.append((name, value))
        lines.append((f"{op} drop-in modules vs torch", spread(o["modules_vs_torch"],
                                                               fmt_ratio)))
    from ..bench import case_name

    slow = summary["slower_than_torch"]
    lines.append(("slower than torch", "none" if not slow else "; ".join(
        f"{case_name(s)} {s['ratio_vs_torch']:.2f}x" for s in slow)))
    ok = summary["all_correct"]
    lines.append(("outputs agree", "-" if ok is None else (
        "yes, every case" if ok else "NO: " + ", ".join(summary["incorrect"]))))
    return lines


def _display_order(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by model, dtype and op (in the order they first appear, ops in
    ``bench.OPS`` order), batches in measurement order within a group."""
    from ..bench import OPS

    models = list(dict.fromkeys(r["model"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        op = r.get("op", "pool")
        return (models.index(r["model"]), dtypes.index(r["dtype"]),
                OPS.index(op) if op in OPS else len(OPS))

    return sorted(rows, key=key)


def _per_table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per (row, table shape): tables of the same shape are shown together."""
    from ..bench import _geomean

    lines = []
    for r in rows:
        groups: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
        for d in r.get("tables_detail") or ():
            groups.setdefault((d["num_rows"], d["dim"], d["lookups"]), []).append(d)
        for (num_rows, dim, lookups), ds in groups.items():
            rec = _geomean([d["recengine_lookups_per_s"] for d in ds])
            tor = _geomean([d["torch_lookups_per_s"] for d in ds if d["torch_lookups_per_s"]])
            ratio = _geomean([d["ratio_vs_torch"] for d in ds if d["ratio_vs_torch"]])
            lines.append(f"  {r['model']}/{r['dtype']}/b{r['batch']} table alone: {len(ds)} x "
                         f"{num_rows:,} rows x {dim}, {lookups:,} lookups: recengine "
                         f"{_fmt_rate(rec)}, torch {_fmt_rate(tor)} M lookups/s, "
                         f"{fmt_ratio(ratio)}")
    return lines


class BenchStudy(Study):
    name = "bench"
    help = "time pooling for the DeepRecInfra models against torch and numpy"
    description = (
        "Time each model's embedding stage (all tables, fixed pooling, uniform random "
        "indices) with recengine, torch and numpy side by side on the same tables, "
        "indices and thread count, check that the outputs agree, and compare with a plain "
        "gather of the same rows (the probe). Tables are scaled to --table-mb per model "
        "unless --scale is given. The forward and forward_backward ops (fp32, need torch) "
        "time the stage as torch modules: recengine.nn.EmbeddingBagCollection on a "
        "KeyedJaggedTensor and the converted drop-in modules against torch's "
        "nn.EmbeddingBag per table, in eval or as a training step without the optimizer, "
        "checking outputs and weight gradients.")
    options = (
        Option("--models", "comma list of models (default: all eight: rmc1,rmc2,rmc3,wnd,"
                           "mtwnd,ncf,din,dien)", parse=a.comma_list(a.model, "model")),
        Option("--batches", "comma list of batch sizes (default: 1,16,64,256,1024)",
               parse=a.comma_list(a.positive_int, "batch")),
        Option("--dtypes", "comma list of table dtypes: fp32, int8 (default: both)",
               parse=a.comma_list(a.one_of("bench", "BENCH_DTYPES", str.lower), "dtype")),
        Option("--impls", "comma list of implementations to time (default: "
                          "recengine,torch,numpy)",
               parse=a.comma_list(a.one_of("bench", "IMPLEMENTATIONS", str.lower),
                                  "implementation")),
        Option("--ops", "comma list of what to measure: pool (recengine's lookup vs torch vs "
                        "numpy), forward (eval forward as torch modules), forward_backward "
                        "(forward + backward, no optimizer step); the last two on fp32 tables "
                        "only (default: all three)",
               parse=a.comma_list(a.one_of("bench", "OPS",
                                           lambda t: t.lower().replace("-", "_")), "op")),
        Option("--grad", "weight gradients of the forward_backward op (default: sparse, as in "
                         "DLRM training)", choices=("sparse", "dense")),
        Option("--scale", "row-count factor applied to every model's tables (1 = the paper's "
                          "full size, e.g. 4M rows per RMC1 table); overrides --table-mb",
               parse=a.positive_float),
        Option("--table-mb", "scale each model's fp32 tables to about this many MiB, never "
                             "above full size (default: 256, well above a 32 MB L3)",
               parse=a.positive_float),
        Option("--min-rows", "fewest rows a scaled table keeps (default: 1024)",
               parse=a.positive_int),
        Option("--threads", "threads for recengine and torch alike (default: all cores)",
               parse=a.positive_int),
        Option("--repeats", "most timed calls per implementation and case; the median is "
                            "reported (default: 20)", parse=a.positive_int),
        Option("--budget", "time budget per implementation and case; stops early after it "
                           "(default: 0.3)", dest="budget_s", parse=a.positive_float,
               metavar="SECONDS"),
        Option("--warmup", "untimed calls before the first round (default: 1)",
               parse=a.int_in(0, 10**6)),
        Option("--rounds", "time the implementations in turn this many times, splitting "
                           "--repeats and --budget between rounds (default: 3)",
               parse=a.positive_int),
        Option("--timing", "alternate: implementations take turns call by call, as one "
                           "process serving both runs them (default); blocks: each alone in "
                           "blocks of calls with the cache flushed between (--rounds)",
               choices=("alternate", "blocks")),
        Option("--seed", "seed of tables and indices", parse=a.seed),
        Option("--no-probe", "skip the gather roofline (probe) measurement", switch=True),
        Option("--per-table", "also time every table alone (recengine vs torch); in the JSON "
                              "as tables_detail, and printed", switch=True),
        Option("--quick", "a tiny smoke run: rmc1 at 2 MiB, batches 1 and 16, 3 calls each "
                          "(explicit options still apply)", switch=True),
    )
    quick: ClassVar[Mapping[str, Any]] = {
        "models": ["rmc1"], "batches": [1, 16], "table_mb": 2.0, "repeats": 3, "rounds": 1,
        "budget_s": 0.02, "evict_mb": 4.0, "fresh_mb": 0.5}
    json_help = ("print only a JSON list of row objects to stdout (progress and messages go "
                 "to stderr)")
    out_help = "also write the results as JSON: {rows, summary, config, machine}"
    plot_help = ("save a chart of the speed ratio vs torch per model and batch (needs "
                 "matplotlib)")

    def __init__(self) -> None:
        self.judge = True
        self._busy_start: Optional[float] = None

    def config_class(self) -> type:
        from ..bench import BenchConfig
        return BenchConfig

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        values = dict(values)
        values["probe"] = not values.pop("no_probe", False)
        # A smoke run's few calls are noise: it shows the figures but judges no target.
        self.judge = not values.get("quick")
        return super().configure(values, note)

    def before(self, config: Any, note: Callable[[str], None]) -> None:
        import recengine

        from ..bench import NUMPY_METHOD, default_threads

        threads = config.threads or default_threads()
        self._busy_start = cpus_busy()
        if self._busy_start is not None and self._busy_start > 0.2:
            note(f"warning: other processes keep {self._busy_start:.1f} of {os.cpu_count()} "
                 "CPUs busy: timings will be noisy (torch's OpenMP threads above all)")
        info = recengine.build_info()
        note(f"recengine {info.get('version', recengine.__version__)} "
             f"({info.get('profile', '?')}, simd {info.get('simd', '?')}), {threads} threads, "
             f"{len(config.models)} models x {len(config.dtypes)} dtypes x "
             f"{len(config.batches)} batches, ops {','.join(config.ops)}"
             + (f" (grad {config.grad})" if "forward_backward" in config.ops else ""))
        note(f"numpy column: {NUMPY_METHOD}")

    def total(self, config: Any) -> int:
        from ..bench import planned_rows
        return planned_rows(config)

    def rows(self, config: Any, status: Callable[[str], None],
             tick: Callable[[], None]) -> Iterator[dict[str, Any]]:
        from ..bench import iter_bench
        return iter_bench(config, status=status)

    def summarize(self, rows: Sequence[dict[str, Any]], config: Any) -> Any:
        from ..bench import summarize
        return summarize(rows)

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        from ..bench import default_threads

        ordered = _display_order(rows)
        body = [["-" if r.get(k) is None else fmt(r[k]) for _, k, fmt in _COLUMNS]
                for r in ordered]
        groups = [(r["model"], r["dtype"], r.get("op", "pool")) for r in ordered]
        sections = [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]]
        threads = config.threads or default_threads()
        table = Table(f"embedding stage: million lookups/s (median per call), {threads} "
                      f"threads", [h for h, _, _ in _COLUMNS], body, left=4, sections=sections)
        targets = Table("targets" if self.judge else
                        "figures (a --quick run: too few calls to judge a target)",
                        ["metric", "value"],
                        [list(line) for line in _summary_lines(summary, self.judge)])
        return Report(tables=[table, targets], lines=_per_table_lines(rows))

    def plot(self, rows: Sequence[dict[str, Any]], path: str, config: Any) -> None:
        from ..bench import plot_bench
        plot_bench(rows, path, config)

    def config_dict(self, config: Any) -> dict[str, Any]:
        from ..bench import config_dict
        return config_dict(config)

    def out_extra(self, config: Any) -> dict[str, Any]:
        import recengine

        from ..bench import NUMPY_METHOD, default_threads
        return {
            "machine": {
                "build_info": dict(recengine.build_info()),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "threads": config.threads or default_threads(),
                "cpus_busy_start": self._busy_start,
                "cpus_busy_end": cpus_busy(),
                "loadavg_end": _loadavg(),
                "numpy": _version("numpy"),
                "torch": _version("torch"),
            },
            "numpy_method": NUMPY_METHOD,
        }


STUDY = BenchStudy()
