"""Bisection against DeepRecSys's running-p95 controller: how each rate search rates each batch
size, and what that does to DeepRecSched's gain over a static baseline, in the simulator.

    python benches/rate_search.py                       # curves profiled here, one worker
    python benches/rate_search.py --curves benches/results/serve_sim16_p16span_h100host.json
    python benches/rate_search.py --model rmc1,ncf --cores 16 --window 64,512
    python benches/rate_search.py --real --processes --cores 15 --model rmc1 --batches 1024,128

For each model and core count, every batch size of DeepRecSched's climb is searched three
ways on one :class:`~recengine.sched.SimulatedServer` (the study's: runs of at least ten
targets): bisection over fixed-rate runs (:func:`~recengine.sched.max_qps`), and DeepRecSys's
controller (:func:`~recengine.sched.controlled_qps`) with each ``--window``. The table gives
bisection's QPS, each controller's answer over it, and the p95 of a fixed-rate run at that
answer; the summary gives DeepRecSched's mean gain over whole queries and over batch 32 as
each search sees it. Latency curves come from a ``recengine serve --json --out`` file's rows
(``--curves``) or are profiled here with one worker, as ``recengine serve --simulate`` does.
With ``--real`` every search runs on the real server here instead (bisection within 5%,
a missed rate run once more, as ``recengine serve`` does).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Optional

import numpy as np
from recengine.models import TARGETS_MS, build
from recengine.sched import (
    BATCH_SIZES,
    ControllerSettings,
    LatencyCurve,
    Policy,
    SimulatedServer,
    controlled_qps,
    max_qps,
)
from recengine.serving import RealServer, Server
from recengine.serving.study import SPAN_TARGETS
from recengine.shapes import model_names


def curves_from(path: Optional[str], models: list[str]) -> dict[str, LatencyCurve]:
    """Each model's CPU latency curve: the first row of ``path`` that has it, or profiled."""
    out: dict[str, LatencyCurve] = {}
    if path:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for row in data["rows"] if isinstance(data, dict) else data:
            out.setdefault(row["model"], LatencyCurve.from_dict(row["cpu_curve"]))
    for name in models:
        if name not in out:
            print(f"# profiling {name} (one worker)", flush=True)
            with Server(build(name, scale=0.05), workers=1) as server:
                out[name] = server.profile()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all", help="model, comma list or 'all'")
    p.add_argument("--cores", default="16,40", help="comma list of simulated core counts")
    p.add_argument("--curves", default=None, help="a `recengine serve --json --out` file")
    p.add_argument("--window", default="64,512",
                   help="comma list of the controller's windows (DeepRecSys: 64)")
    p.add_argument("--batches", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--real", action="store_true",
                   help="search the real server here instead (one worker per core of "
                        "--cores, which must be one count; its own profile seeds the search)")
    p.add_argument("--processes", action="store_true", help="with --real: worker processes")
    args = p.parse_args()
    models = model_names() if args.model == "all" else args.model.split(",")
    cores = [int(c) for c in args.cores.split(",")]
    windows = [int(w) for w in args.window.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if args.real and len(cores) != 1:
        p.error("--real takes one core count")
    curves = {} if args.real else curves_from(args.curves, models)
    t0 = time.perf_counter()
    names = [f"w{w}" for w in windows]
    print("| model | cores | batch | bisect QPS | " + " | ".join(
        f"{n} / bisect | {n} p95 ms" for n in names) + " |")
    print("|---|---|---|---|" + "---|---|" * len(windows))
    gains: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for name in models:
        target = TARGETS_MS[name]
        for c in cores:
            server = None
            sim: Any
            if args.real:
                server = Server(build(name, scale=0.05), workers=c, processes=args.processes)
                sim = RealServer(server, span_s=SPAN_TARGETS * target / 1e3)
            else:
                sim = SimulatedServer(curves[name], c, span_s=SPAN_TARGETS * target / 1e3)
            qps: dict[str, dict[int, float]] = {"bisect": {}, **{n: {} for n in names}}
            for b in batches:
                policy = Policy(b)
                qps["bisect"][b], _ = max_qps(lambda q, be=sim, pol=policy: be.run(pol, q), target,
                                              sim.capacity_hint(policy),
                                              0.05 if args.real else 0.02, confirm=sim.confirm)
                cells = []
                for n, w in zip(names, windows):
                    q, run = controlled_qps(sim, policy, target, ControllerSettings(window=w))
                    qps[n][b] = q
                    ratio = q / qps["bisect"][b] if qps["bisect"][b] > 0 else float("nan")
                    cells.append(f"{ratio:.2f} | {run.p95:.3g}" if run else "- | -")
                print(f"| {name} | {c} | {b} | {qps['bisect'][b]:,.0f} | "
                      + " | ".join(cells) + " |", flush=True)
            if server is not None:
                server.close()
            for search, table in qps.items():
                best = max(table.values())
                whole, small = table[max(batches)], table[min(batches)]
                gains.setdefault((c, search), []).append(
                    (best / whole if whole > 0 else float("nan"),
                     best / small if small > 0 else float("nan")))
    print()
    print(f"DeepRecSched's mean gain over {len(models)} models, as each search rates the "
          f"batch sizes (over whole queries, batch {max(batches)}; over batch {min(batches)}):")
    print("(n/m: the mean is over the n of m models where that search found a rate for the "
          "static size)")
    print("| cores | search | over whole queries | over batch " + f"{min(batches)} |")
    print("|---|---|---|---|")
    for (c, search), g in gains.items():
        arr = np.array(g)
        cells = []
        for col in arr.T:
            ok = np.isfinite(col)
            mean = f"{col[ok].mean():.2f}x" if ok.any() else "-"
            cells.append(mean if ok.all() else f"{mean} ({ok.sum()}/{ok.size})")
        print(f"| {c} | {search} | {cells[0]} | {cells[1]} |")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
