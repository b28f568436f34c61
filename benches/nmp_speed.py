"""How fast the RecNMP emulator runs: emulated lookups per second, per core.

    python benches/nmp_speed.py                      # rmc1, batch 256, 1 and all threads
    python benches/nmp_speed.py --model rmc2 --batch 64 --threads 1,16 --repeat 5

Each case emulates one trace of ``--batch`` samples of the model's tables (``--table-mb`` MiB
of tables, Zipf rows of exponent ``--zipf``) on the DDR4 host and on RecNMP with and without
its RankCache, and prints the best of ``--repeat`` runs: lookups per second of wall time, and
per core (divided by the thread count). Trace generation is not timed.
"""

from __future__ import annotations

import argparse
import time

from recengine import get_num_threads, set_num_threads
from recengine.nmp import NMPConfig, Trace, emulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rmc1")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--table-mb", type=float, default=256.0)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--threads", default=f"1,{get_num_threads()}")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    trace = Trace.from_model(args.model, args.batch, "zipf", args.zipf, args.table_mb)
    cases = {
        "ddr4-baseline": NMPConfig.preset("ddr4-baseline"),
        "recnmp, no RankCache": NMPConfig.preset("recnmp", cache_bytes=0),
        "recnmp": NMPConfig.preset("recnmp"),
    }
    print(f"{args.model}, batch {args.batch}, {len(trace):,} lookups, zipf {args.zipf}")
    print("| config | threads | ms | M lookups/s | M lookups/s per core | DRAM commands per "
          "lookup |")
    print("|---|---|---|---|---|---|")
    for threads in sorted({int(t) for t in args.threads.split(",")}):
        set_num_threads(threads)
        for name, cfg in cases.items():
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = emulate(trace, cfg).raw
                best = min(best, time.perf_counter() - t0)
            rate = len(trace) / best / 1e6
            cmds = (r["dram_reads"] + r["activates"] + r["precharges"]) / len(trace)
            print(f"| {name} | {threads} | {best * 1e3:.1f} | {rate:.2f} | {rate / threads:.2f} "
                  f"| {cmds:.2f} |")


if __name__ == "__main__":
    main()
