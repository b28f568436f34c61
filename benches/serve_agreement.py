"""How well the simulator, fed by a latency curve profiled through the server, predicts the
real server's latency-bounded throughput on this machine.

    python benches/serve_agreement.py                 # rmc1 at its 100 ms target, 3 repeats
    python benches/serve_agreement.py --model wnd --batches 1024,64 --repeat 5
    python benches/serve_agreement.py --model rmc1,wnd --workers 16 --processes
    python benches/serve_agreement.py --profile-load 0.9,saturated,0.5
    python benches/serve_agreement.py --profile-load 0.9,0.3+0.6+0.9  # and curves by load
    python benches/serve_agreement.py --confirm 0     # a real miss is not run again
    python benches/serve_agreement.py --service-times median
    python benches/serve_agreement.py --gaps          # held time against the idle gap before
    python benches/serve_agreement.py --plain-malloc  # glibc's adjusting malloc thresholds

For each repeat (a fresh server and profiles) and each batch size: the highest Poisson rate
whose p95 meets the target on the real server (this machine's cores, up to ``--workers``) and
in the simulator on as many cores, and their ratio, for each way of profiling the curve
(``Server.profile``: every query at once, or Poisson at a fraction of capacity; or several
fractions joined by ``+``, a :class:`~recengine.sched.CurvesByLoad` that serves each simulated
run at the curve of the load it puts on the cores) and each way
of drawing service times from it (every sub-request the median, or drawn from the spread the
profile saw). The curve
is profiled with all the workers running at once, so it carries what they do to each other
(memory bandwidth, shared caches, clock speed, the hand-over of sub-requests).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import numpy as np
import recengine.models as rm
from recengine.sched import Cpu, CurvesByLoad, LatencyCurve, Policy, SimulatedServer, max_qps
from recengine.serving import RealServer, Server, Service, idle_before

#: Idle gaps (ms) before a sub-request, for ``--gaps``.
GAP_EDGES_MS = (0.0, 0.2, 2.0, 20.0, np.inf)


def _load(text: str) -> Optional[float]:
    return None if text == "saturated" else float(text)


def gap_table(name: str, rep: int, profiled: dict[int, list[Service]]) -> list[str]:
    """Markdown rows: for each profiled batch size and idle-gap range, how many sub-requests
    and the median time they held their worker."""
    rows = []
    for b, services in profiled.items():
        gaps = idle_before(services) * 1e3
        held = np.array([r.held for r in services]) * 1e3
        cells = []
        for lo, hi in zip(GAP_EDGES_MS, GAP_EDGES_MS[1:]):
            inside = (gaps >= lo) & (gaps < hi) if hi < np.inf else gaps >= lo
            cells.append(f"{int(inside.sum())}: {np.median(held[inside]):.3g}"
                         if inside.any() else "-")
        rows.append(f"| {name} | {rep} | {b} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rmc1", help="model or comma list")
    p.add_argument("--target-ms", type=float, default=None)
    p.add_argument("--batches", default="1024,64")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--processes", action="store_true", help="one process per worker")
    p.add_argument("--confirm", type=int, default=1,
                   help="runs more of a real rate that misses before it counts as a miss")
    p.add_argument("--profile-load", default="0.9",
                   help="comma list of profiling loads: 'saturated', a fraction in (0, 1], or "
                        "fractions joined by '+' (curves by load)")
    p.add_argument("--service-times", default="median,profiled",
                   help="comma list of 'median' and 'profiled' (drawn from the spread)")
    p.add_argument("--plain-malloc", action="store_true",
                   help="leave the workers' malloc thresholds to glibc's adjustment (a fresh "
                        "worker then runs slower until it has run a large batch)")
    p.add_argument("--gaps", action="store_true",
                   help="after the runs, the first profile's held times by the idle gap "
                        "before each sub-request")
    args = p.parse_args()
    loads = args.profile_load.split(",")
    kinds = args.service_times.split(",")
    if not kinds or any(k not in ("median", "profiled") for k in kinds):
        p.error(f"--service-times takes 'median' and 'profiled', got {args.service_times!r}")
    columns = [(x, k) for x in loads for k in kinds]
    kind = "worker processes" if args.processes else "worker threads"
    print(f"{args.workers} {kind}")
    print("| model | target ms | repeat | batch | real QPS | "
          + " | ".join(f"simulated / real ({x}, {k})" for x, k in columns) + " |")
    print("|---|---|---|---|---|" + "---|" * len(columns))
    gap_rows: list[str] = []
    found: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    for name in args.model.split(","):
        model = rm.build(name)
        target = args.target_ms or rm.TARGETS_MS[model.name]
        for rep in range(args.repeat):
            with Server(model, workers=args.workers, seed=rep, processes=args.processes,
                        steady_malloc=not args.plain_malloc) as server:
                single: dict[str, LatencyCurve] = {}  # each load profiled once
                for x in (y for column in loads for y in column.split("+")):
                    if x in single:
                        continue
                    single[x] = server.profile(load=_load(x))
                    if len(single) == 1 and args.gaps:
                        new = gap_table(model.name, rep, server.profile_services)
                        gap_rows += new
                        print("\n".join(f"gaps {r}" for r in new), file=sys.stderr,
                              flush=True)  # in case the run is cut short
                curves: dict[str, Cpu] = {
                    x: single[x] if "+" not in x else CurvesByLoad(
                        tuple(float(y) for y in x.split("+")),
                        tuple(single[y] for y in x.split("+")))
                    for x in loads}
                real = RealServer(server, queries=300, span_s=1.0, curve=curves[loads[0]],
                                  seed=rep, confirm=args.confirm)
                sims = [SimulatedServer(curves[x], args.workers, queries=300,
                                        span_s=1.0, seed=rep, spread=k == "profiled")
                        for x, k in columns]
                for b in (int(x) for x in args.batches.split(",")):
                    policy = Policy(b)
                    r, *s = (max_qps(lambda q, k=k, p=policy: k.run(p, q), target,
                                     k.capacity_hint(policy), 0.03, confirm=k.confirm)[0]
                              for k in (real, *sims))
                    print(f"| {model.name} | {target:g} | {rep} | {b} | {r:,.0f} | "
                          + " | ".join(f"{x / r:.2f}" if r else "-" for x in s) + " |",
                          flush=True)
                    found.setdefault((model.name, b), []).append((r, *s))
    if args.repeat > 1:
        # The real server's own repeats differ; compare the means over repeats too.
        print("\nover the repeats: the real server's mean QPS (its range as a fraction of the "
              "mean), and the simulator's mean over the real mean")
        print("| model | batch | real QPS mean | real range / mean | "
              + " | ".join(f"simulated / real ({x}, {k})" for x, k in columns) + " |")
        print("|---|---|---|---|" + "---|" * len(columns))
        for (name, b), rows in found.items():
            qps = np.array(rows)
            real_mean = qps[:, 0].mean()
            spread = (qps[:, 0].max() - qps[:, 0].min()) / real_mean if real_mean else np.nan
            print(f"| {name} | {b} | {real_mean:,.0f} | {spread:.2f} | "
                  + " | ".join(f"{m / real_mean:.2f}" if real_mean else "-"
                               for m in qps[:, 1:].mean(axis=0)) + " |", flush=True)
    if gap_rows:
        ranges = [f"{lo:g}-{hi:g} ms" for lo, hi in zip(GAP_EDGES_MS, GAP_EDGES_MS[1:])]
        print(f"\nprofile ({loads[0]}): sub-requests and their median held ms, by the idle gap "
              f"before them (a worker's first: the last column)")
        print("| model | repeat | batch | " + " | ".join(ranges) + " |")
        print("|---|---|---|" + "---|" * len(ranges))
        print("\n".join(gap_rows), flush=True)


if __name__ == "__main__":
    main()
