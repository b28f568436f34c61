"""What an oblivious lookup costs: ``EmbeddingTable.lookup(..., oblivious="scan")`` against the
plain lookup, call by call in turn on the same ids, over table sizes and batch sizes (one
lookup a bag, fp32, one thread as the scan runs). Prints lookups/s of each and the slowdown.

    python benches/oblivious_cost.py [--rows 1000,10000,100000] [--batches 1,16,64,256]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import recengine as rc


def _median_s(fns: list[partial[np.ndarray]], budget_s: float) -> list[float]:
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    start = time.perf_counter()
    while len(times[0]) < 3 or (time.perf_counter() - start < budget_s
                                and len(times[0]) < 200):
        for k in order:  # in turn, each going first as often
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
        order.reverse()
    return [float(np.median(t)) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000,10000,100000")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds a case at most")
    args = ap.parse_args()
    rc.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{'rows':>8} {'batch':>6} {'plain lookups/s':>16} {'scan lookups/s':>15} "
          f"{'slowdown':>9} {'scan GB/s':>10}")
    for rows in (int(r) for r in args.rows.split(",")):
        t = rc.EmbeddingTable(rng.standard_normal((rows, args.dim), dtype=np.float32))
        for batch in (int(b) for b in args.batches.split(",")):
            ids = rng.integers(0, rows, batch)
            ones = np.ones(batch, dtype=np.int64)
            plain, scan = _median_s([partial(t.lookup, ids, lengths=ones),
                                     partial(t.lookup, ids, lengths=ones, oblivious="scan")],
                                    args.budget)
            print(f"{rows:>8} {batch:>6} {batch / plain:>16,.0f} {batch / scan:>15,.0f} "
                  f"{scan / plain:>9,.0f} {rows * args.dim * 4 / scan / 1e9:>10.2f}")


if __name__ == "__main__":
    main()
