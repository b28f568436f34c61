"""What the oblivious lookups cost: ``EmbeddingTable.lookup(..., oblivious=...)`` (the scan, Path
ORAM, padding) against the plain lookup, call by call in turn on the same ids, over table sizes
and batch sizes (one lookup a bag, fp32; the plain lookup and the scan on the package's
threads, the ORAM and padding on one). Prints lookups/s, the slowdown, and where the scan
beats the ORAM (``recengine.privacy.cost``; ``recengine privacy --attacks cost`` prints the
same table).

    python benches/oblivious_cost.py [--rows 100,1000,10000,100000] [--batches 1,16,64,256,1024]
"""

from __future__ import annotations

import argparse
import json

import recengine as rc
from recengine.privacy.cost import DEFENCES, crossover, measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100,1000,10000,100000")
    ap.add_argument("--batches", default="1,16,64,256,1024")
    ap.add_argument("--defences", default=",".join(DEFENCES))
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--budget", type=float, default=0.5, help="seconds a case at least")
    ap.add_argument("--max-call", type=float, default=5.0,
                    help="seconds one scan call may take before it is extrapolated")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    print(f"threads {rc.get_num_threads()}")
    print(f"{'rows':>10} {'batch':>6} {'defence':>8} {'lookups/s':>12} {'call us':>12} "
          f"{'slowdown':>9} {'plain lookups/s':>16}")
    rows = []
    for r in measure([int(x) for x in args.rows.split(",")],
                     [int(x) for x in args.batches.split(",")], dim=args.dim,
                     budget_s=args.budget, max_call_s=args.max_call,
                     defences=args.defences.split(",")):
        rows.append(r)
        est = "~" if r["estimated"] else ""
        print(f"{r['rows']:>10,} {r['batch']:>6} {r['defence']:>8} "
              f"{est + format(r['lookups_per_s'], ',.0f'):>12} {r['latency_us']:>12,.1f} "
              f"{r['slowdown']:>8,.1f}x {r['plain_lookups_per_s']:>16,.0f}", flush=True)
    print("scan beats ORAM up to (rows, by batch):", crossover(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
