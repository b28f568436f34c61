"""How well the simulator, fed by a latency curve profiled through the server, predicts the
real server's latency-bounded throughput on this machine.

    python benches/serve_agreement.py                 # rmc1 at its 100 ms target, 3 repeats
    python benches/serve_agreement.py --model wnd --batches 1024,64 --repeat 5
    python benches/serve_agreement.py --model rmc1,wnd --workers 16 --processes
    python benches/serve_agreement.py --profile-load 0.9,saturated,0.5
    python benches/serve_agreement.py --confirm 0     # a real miss is not run again

For each repeat (a fresh server and profiles) and each batch size: the highest Poisson rate
whose p95 meets the target on the real server (this machine's cores, up to ``--workers``) and
in the simulator on as many cores, and their ratio, for each way of profiling the curve
(``Server.profile``: every query at once, or Poisson at a fraction of capacity). The curve
is profiled with all the workers running at once, so it carries what they do to each other
(memory bandwidth, shared caches, clock speed, the hand-over of sub-requests).
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import recengine.models as rm
from recengine.sched import Policy, SimulatedServer, max_qps
from recengine.serving import RealServer, Server


def _load(text: str) -> Optional[float]:
    return None if text == "saturated" else float(text)


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
                   help="comma list of profiling loads: 'saturated' or a fraction in (0, 1]")
    args = p.parse_args()
    loads = args.profile_load.split(",")
    kind = "worker processes" if args.processes else "worker threads"
    print(f"{args.workers} {kind}")
    print("| model | target ms | repeat | batch | real QPS | "
          + " | ".join(f"simulated / real ({x})" for x in loads) + " |")
    print("|---|---|---|---|---|" + "---|" * len(loads))
    for name in args.model.split(","):
        model = rm.build(name)
        target = args.target_ms or rm.TARGETS_MS[model.name]
        for rep in range(args.repeat):
            with Server(model, workers=args.workers, seed=rep,
                        processes=args.processes) as server:
                curves = [server.profile(load=_load(x)) for x in loads]
                real = RealServer(server, queries=300, span_s=1.0, curve=curves[0], seed=rep,
                                  confirm=args.confirm)
                sims = [SimulatedServer(c, args.workers, queries=300, span_s=1.0, seed=rep)
                        for c in curves]
                for b in (int(x) for x in args.batches.split(",")):
                    policy = Policy(b)
                    r, *s = (max_qps(lambda q, k=k, p=policy: k.run(p, q), target,
                                     k.capacity_hint(policy), 0.03, confirm=k.confirm)[0]
                              for k in (real, *sims))
                    print(f"| {model.name} | {target:g} | {rep} | {b} | {r:,.0f} | "
                          + " | ".join(f"{x / r:.2f}" for x in s) + " |", flush=True)


if __name__ == "__main__":
    main()
