"""Successive profiles of one fresh server: whether its first profile runs slower than the
ones after it (a worker's allocator not yet in its steady state), with glibc's adjusting
malloc thresholds and with them fixed (``recengine.serving.allocator.steady_malloc``).

    python benches/profile_warmup.py                          # dien, 16 worker processes
    python benches/profile_warmup.py --model din --profiles 5 --workers 8
    python benches/profile_warmup.py --large-first            # one 1,024-item forward first

For each way (fixed thresholds, glibc's own, glibc's own after each worker ran one large
batch), a fresh server with worker processes profiles the batch sizes ``--profiles`` times
in a row at 90% load, and prints each profile's median held ms per batch size.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import recengine.models as rm
from recengine.sched import Policy
from recengine.serving import Server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dien")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batches", default="64,128,256")
    p.add_argument("--profiles", type=int, default=3)
    p.add_argument("--large-first", action="store_true",
                   help="also: glibc's thresholds, after each worker ran a 1,024-item batch")
    args = p.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    model = rm.build(args.model)
    ways = [("fixed thresholds", True, False), ("glibc's own", False, False)]
    if args.large_first:
        ways.append(("glibc's own, 1,024 items first", False, True))
    print(f"{args.model}, {args.workers} worker processes: median held ms of successive "
          f"profiles (90% load) on a fresh server")
    print("| malloc | profile | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    for label, steady, large in ways:
        with Server(model, workers=args.workers, processes=True,
                    steady_malloc=steady) as server:
            if large:  # every worker (most likely) runs one 1,024-item forward
                n = 3 * args.workers
                server.run(np.zeros(n), np.full(n, 1024), Policy(1024))
            for k in range(args.profiles):
                t0 = time.perf_counter()
                c = server.profile(batches, load=0.9)
                print(f"| {label} | {k + 1} ({time.perf_counter() - t0:.0f} s) | "
                      + " | ".join(f"{m:.3g}" for m in c.ms) + " |", flush=True)


if __name__ == "__main__":
    main()
