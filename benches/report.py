"""Markdown tables of ``recengine bench`` and ``recengine bench-models`` results, as
benches/README.md shows them.

Usage::

    python benches/report.py benches/results/local_2_threads.json
    python benches/report.py benches/results/device_models_t{1,4,8,16}.json

The first prints the targets table, the pool table and the module-ops table of one ``bench
--out`` file; given ``bench-models --out`` files (one per thread count), it prints one table
of every route's speedup over torch with a column per file, and the summary lines.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Optional

from recengine.bench import OP_TARGETS


def _ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def _mlps(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 1e6:.1f}"


def _geomean(values: list[float]) -> tuple[float, float, int]:
    """Geometric mean, minimum and count of positive values."""
    values = [v for v in values if v and v > 0]
    if not values:
        return math.nan, math.nan, 0
    return math.exp(sum(map(math.log, values)) / len(values)), min(values), len(values)


def _group(rows: list[dict[str, Any]], group: str) -> list[dict[str, Any]]:
    if group == "small_batch":
        return [r for r in rows if r["batch"] <= 16]
    if group == "large_batch":
        return [r for r in rows if r["batch"] >= 64]
    return rows


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per tracked target of the module ops, plus the drop-in modules' geomeans."""
    out = ["| target (issue) | this run |", "|---|---|"]
    for op, goals in OP_TARGETS.items():
        mine = [r for r in rows if r["op"] == op]
        for group, goal in goals:
            sel = _group(mine, group)
            g, lo, n = _geomean([r["ratio_vs_torch"] for r in sel])
            if not n:
                continue
            worst = min(sel, key=lambda r: r["ratio_vs_torch"])
            verdict = "met in every case" if lo >= goal else (
                "geomean met, not every case" if g >= goal else "not met")
            what = {"small_batch": "batch <= 16", "large_batch": "batch >= 64",
                    "all": "all batches"}[group]
            out.append(f"| {op} (collection) >= {goal:g}x torch, {what} | geomean {g:.2f}x, "
                       f"min {lo:.2f}x ({worst['model']} b{worst['batch']}): {verdict} |")
    mods = [_geomean([r["ratio_modules_vs_torch"] for r in rows if r["op"] == op])[0]
            for op in OP_TARGETS]
    out.append("| drop-in modules vs torch (forward / forward+backward) | geomean "
               + " / ".join(f"{m:.2f}x" for m in mods) + " |")
    return out


def pool_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| model | batch | dtype | lookups/call | recengine M/s | torch M/s | numpy M/s "
           "| vs torch | vs numpy | GB/s | of probe |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["op"] != "pool":
            continue
        probe = "-" if r["probe_fraction"] is None else f"{r['probe_fraction']:.0%}"
        gb = "-" if r["recengine_gb_per_s"] is None else f"{r['recengine_gb_per_s']:.1f}"
        out.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['lookups']:,} "
                   f"| {_mlps(r['recengine_lookups_per_s'])} | {_mlps(r['torch_lookups_per_s'])} "
                   f"| {_mlps(r['numpy_lookups_per_s'])} | {_ratio(r['ratio_vs_torch'])} "
                   f"| {_ratio(r['ratio_vs_numpy'])} | {gb} | {probe} |")
    return out


def module_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| model | batch | lookups/call | forward: collection | forward: drop-in modules "
           "| fwd+bwd: collection | fwd+bwd: drop-in modules | torch forward / fwd+bwd |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_case: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["op"] in OP_TARGETS:
            by_case.setdefault((r["model"], r["batch"]), {})[r["op"]] = r
    for (model, batch), ops in by_case.items():
        f, fb = ops.get("forward"), ops.get("forward_backward")
        any_row = f or fb
        assert any_row is not None

        def cell(row: Optional[dict[str, Any]], key: str) -> str:
            return "-" if row is None else _ratio(row[key])

        out.append(f"| {model} | {batch} | {any_row['lookups']:,} "
                   f"| {cell(f, 'ratio_vs_torch')} | {cell(f, 'ratio_modules_vs_torch')} "
                   f"| {cell(fb, 'ratio_vs_torch')} | {cell(fb, 'ratio_modules_vs_torch')} "
                   f"| {_time(f and f['torch_s'])} / {_time(fb and fb['torch_s'])} |")
    return out


def models_table(docs: list[dict[str, Any]]) -> list[str]:
    """Whole-model speedups: a row per (model, step, batch), per file a torch time and each
    route's speedup, then each file's geomean at batch >= 16 and slowest case per route."""
    routes = list(dict.fromkeys(r["route"] for d in docs for r in d["rows"]))
    head = "| model | step | batch |"
    rule = "|---|---|---:|"
    for d in docs:
        t = d["rows"][0]["threads"]
        head += f" torch ({t} thr) |" + "".join(f" {r} |" for r in routes)
        rule += "---:|" * (1 + len(routes))
    out = [head, rule]
    cases = dict.fromkeys((r["model"], r["step"], r["batch"]) for r in docs[0]["rows"])
    for model, step, batch in cases:
        line = f"| {model} | {step} | {batch} |"
        for d in docs:
            got = {r["route"]: r for r in d["rows"]
                   if (r["model"], r["step"], r["batch"]) == (model, step, batch)}
            first = next(iter(got.values()), None)
            line += f" {_time(first and first['torch_ms'] / 1e3)} |"
            line += "".join(f" {_ratio(got[r]['speedup']) if r in got else '-'} |"
                            for r in routes)
        out.append(line)
    out.append("")
    for d in docs:
        t = d["rows"][0]["threads"]
        for key, s in d["summary"].items():
            if key != "all_correct":
                out.append(f"- {t} threads, {key}: geomean {_ratio(s['geomean_b16_up'])} at "
                           f"batch >= 16 (target {s['target']:g}x), slowest "
                           f"{_ratio(s['min'])} ({s['slowest']})")
    return out


def main(paths: list[str]) -> None:
    docs = []
    for path in paths:
        with open(path) as fh:
            docs.append(json.load(fh))
    if "routes" in docs[0].get("config", {}):
        print("\n".join(models_table(docs)))
        return
    rows = docs[0]["rows"]
    for lines in (targets(rows), pool_table(rows), module_table(rows)):
        print("\n".join(lines), end="\n\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
