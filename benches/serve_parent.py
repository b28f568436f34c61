"""The parent process's own cost when it serves worker processes: how many sub-requests a
second it hands out when every query is queued at once, and its CPU time per sub-request,
saturated and under Poisson streams.

    python benches/serve_parent.py                        # ncf, one worker process per core
    python benches/serve_parent.py --model din --workers 15 --rates 2000,8000

At thousands of sub-requests a second the parent's time per sub-request, not the workers,
can bound the server: every sub-request is one send and one answer through the parent.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import recengine.models as rm
from recengine.sched import Policy
from recengine.serving import Server
from recengine.workload import Workload


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ncf")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batches", default="1,16,128", help="saturated runs' sub-request sizes")
    p.add_argument("--queries", type=int, default=4000, help="queries of a saturated run")
    p.add_argument("--rates", default="2000,5000,8000", help="Poisson streams' QPS")
    p.add_argument("--stream-batches", default="1024,128", help="the streams' batch sizes")
    p.add_argument("--span-s", type=float, default=1.5, help="a stream's length")
    args = p.parse_args()
    model = rm.build(args.model)
    with Server(model, workers=args.workers, processes=True) as server:
        server.run(np.zeros(200), np.full(200, 1), Policy(1), warmup=0)  # warm up
        print(f"{args.model}, {args.workers} worker processes\n")
        print("| saturated, batch | sub-requests/s | parent CPU us / sub-request | "
              "forward ms (median) | held ms (median) | workers' bound /s |")
        print("|---|---|---|---|---|---|")
        for b in (int(x) for x in args.batches.split(",")):
            n = args.queries
            c0, t0 = time.process_time(), time.perf_counter()
            server.run(np.zeros(n), np.full(n, b), Policy(b), warmup=0)
            c1, t1 = time.process_time(), time.perf_counter()
            fwd = float(np.median([s.seconds for s in server.last_service])) * 1e3
            held = float(np.median([s.held for s in server.last_service])) * 1e3
            print(f"| {b} | {n / (t1 - t0):,.0f} | {1e6 * (c1 - c0) / n:.0f} | {fwd:.3f} | "
                  f"{held:.3f} | {args.workers / fwd * 1e3:,.0f} |", flush=True)
        print("\n| stream QPS | batch | p95 ms | parent CPU us / sub-request | parent cores |")
        print("|---|---|---|---|---|")
        for rate in (float(x) for x in args.rates.split(",")):
            arrivals, sizes = Workload(rate, seed=1).queries(int(rate * args.span_s))
            for b in (int(x) for x in args.stream_batches.split(",")):
                c0 = time.process_time()
                r = server.run(arrivals, sizes, Policy(b))
                c1 = time.process_time()
                subs = len(server.last_service)
                print(f"| {rate:,.0f} | {b} | {r.p95:.2f} | {1e6 * (c1 - c0) / subs:.0f} | "
                      f"{(c1 - c0) / r.span_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
