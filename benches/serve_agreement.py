"""How well the simulator, fed by a latency curve profiled through the server, predicts the
real server's latency-bounded throughput on this machine.

    python benches/serve_agreement.py                 # rmc1 at its 100 ms target, 3 repeats
    python benches/serve_agreement.py --model wnd --batches 1024,64 --repeat 5
    python benches/serve_agreement.py --model rmc1,wnd --workers 16 --processes

For each repeat (a fresh server and profile) and each batch size: the highest Poisson rate
whose p95 meets the target on the real server (this machine's cores, up to ``--workers``) and
in the simulator on as many cores, and their ratio. The curve is profiled with all the
workers running at once, so it carries what they do to each other (memory bandwidth, shared
caches, clock speed).
"""

from __future__ import annotations

import argparse
import os

import recengine.models as rm
from recengine.sched import Policy, SimulatedServer, max_qps
from recengine.serving import RealServer, Server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rmc1", help="model or comma list")
    p.add_argument("--target-ms", type=float, default=None)
    p.add_argument("--batches", default="1024,64")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--processes", action="store_true", help="one process per worker")
    args = p.parse_args()
    kind = "worker processes" if args.processes else "worker threads"
    print(f"{args.workers} {kind}")
    print("| model | target ms | repeat | batch | real QPS | simulated QPS | simulated / real |")
    print("|---|---|---|---|---|---|---|")
    for name in args.model.split(","):
        model = rm.build(name)
        target = args.target_ms or rm.TARGETS_MS[model.name]
        for rep in range(args.repeat):
            with Server(model, workers=args.workers, seed=rep,
                        processes=args.processes) as server:
                curve = server.profile()
                real = RealServer(server, queries=300, span_s=1.0, curve=curve, seed=rep)
                sim = SimulatedServer(curve, args.workers, queries=300, span_s=1.0, seed=rep)
                for b in (int(x) for x in args.batches.split(",")):
                    policy = Policy(b)
                    r, s = (max_qps(lambda q, k=k, p=policy: k.run(p, q), target,
                                    k.capacity_hint(policy), 0.03)[0] for k in (real, sim))
                    print(f"| {model.name} | {target:g} | {rep} | {b} | {r:,.0f} | {s:,.0f} | "
                          f"{s / r:.2f} |", flush=True)


if __name__ == "__main__":
    main()
