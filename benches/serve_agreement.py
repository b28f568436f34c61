"""How well the simulator, fed by a latency curve profiled through the server, predicts the
real server's latency-bounded throughput on this machine.

    python benches/serve_agreement.py                 # rmc1 at its 100 ms target, 3 repeats
    python benches/serve_agreement.py --model wnd --batches 1024,64 --repeat 5

For each repeat (a fresh server and profile) and each batch size: the highest Poisson rate
whose p95 meets the target on the real server (this machine's cores, up to ``--workers``) and
in the simulator on as many cores, and their ratio.
"""

from __future__ import annotations

import argparse
import os

import recengine.models as rm
from recengine.sched import Policy, SimulatedServer, max_qps
from recengine.serving import RealServer, Server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rmc1")
    p.add_argument("--target-ms", type=float, default=None)
    p.add_argument("--batches", default="1024,64")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    model = rm.build(args.model)
    target = args.target_ms or rm.TARGETS_MS[model.name]
    print(f"{model.name}, p95 target {target:g} ms, {args.workers} workers")
    print("| repeat | batch | real QPS | simulated QPS | simulated / real |")
    print("|---|---|---|---|---|")
    for rep in range(args.repeat):
        server = Server(model, workers=args.workers, seed=rep)
        curve = server.profile()
        real = RealServer(server, queries=300, span_s=1.0, curve=curve, seed=rep)
        sim = SimulatedServer(curve, args.workers, queries=300, span_s=1.0, seed=rep)
        for b in (int(x) for x in args.batches.split(",")):
            policy = Policy(b)
            r, s = (max_qps(lambda q, k=k, p=policy: k.run(p, q), target, k.capacity_hint(policy),
                            0.03)[0] for k in (real, sim))
            print(f"| {rep} | {b} | {r:,.0f} | {s:,.0f} | {s / r:.2f} |", flush=True)


if __name__ == "__main__":
    main()
