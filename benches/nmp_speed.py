"""How fast the RecNMP emulator runs, and how close its fast DRAM timing is to the command model.

    python benches/nmp_speed.py                      # rmc1, batch 256, 1 and all threads
    python benches/nmp_speed.py --model rmc2 --batch 64 --threads 1,16 --repeat 5
    python benches/nmp_speed.py --agreement          # also every row of `recengine nmp`

Speed: each case emulates one trace of ``--batch`` samples of the model's tables (``--table-mb``
MiB of tables, Zipf rows of exponent ``--zipf``) on the DDR4 host and on RecNMP with and
without its RankCache (the paper's memory system, 4 DIMMs x 2 ranks a channel), with each DRAM
timing model, and prints the best of ``--repeat`` runs: lookups per second of wall time and per
core (divided by the thread count), and the fast mode's speedup over the command model. Trace
generation is not timed.

Agreement (``--agreement``): every row of the ``recengine nmp`` sweep (its default settings, on
``--system``), host and RecNMP, emulated with both timings on one thread: fast / command for
cycles and energy, whether the RankCache hits are identical, and each mode's time for the
whole sweep.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from recengine import get_num_threads, set_num_threads
from recengine.nmp import NMPConfig, Trace, emulate


def best_of(trace: Trace, cfg: NMPConfig, repeat: int) -> tuple[float, dict[str, Any]]:
    best, raw = float("inf"), {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        raw = emulate(trace, cfg).raw
        best = min(best, time.perf_counter() - t0)
    return best, raw


def speed(args: argparse.Namespace) -> None:
    trace = Trace.from_model(args.model, args.batch, "zipf", args.zipf, args.table_mb)
    cases = {
        "ddr4-baseline": NMPConfig.preset("ddr4-baseline"),
        "recnmp, no RankCache": NMPConfig.preset("recnmp", cache_bytes=0),
        "recnmp": NMPConfig.preset("recnmp"),
    }
    print(f"{args.model}, batch {args.batch}, {len(trace):,} lookups, zipf {args.zipf}")
    print("| config | threads | command: M lookups/s per core | fast: M lookups/s per core "
          "| fast / command speed | fast / command cycles |")
    print("|---|---|---|---|---|---|")
    for threads in sorted({int(t) for t in args.threads.split(",")}):
        set_num_threads(threads)
        for name, cfg in cases.items():
            slow, exact = best_of(trace, replace(cfg, timing="command"), args.repeat)
            quick, fast = best_of(trace, replace(cfg, timing="fast"), args.repeat)
            rate = [len(trace) / t / 1e6 / threads for t in (slow, quick)]
            print(f"| {name} | {threads} | {rate[0]:.2f} | {rate[1]:.2f} | {slow / quick:.2f}x "
                  f"| {fast['cycles'] / exact['cycles']:.3f} |")


def agreement(args: argparse.Namespace) -> None:
    from recengine.nmp import study

    set_num_threads(1)
    config = study.NMPStudyConfig(system=args.system)
    spent = {"command": 0.0, "fast": 0.0}
    worst = {"cycles": 0.0, "energy": 0.0}
    print(f"\nagreement on the `recengine nmp` sweep ({args.system}, one thread)")
    print("| row | system | fast / command cycles | fast / command energy | "
          "same cache hits (every batch) |")
    print("|---|---|---|---|---|")
    traces: dict[tuple[str, float, int], Trace] = {}
    seen = set()
    for case in study._cases(config):
        key = (case.model, case.zipf, case.models)
        if key not in traces:
            traces[key] = study._trace(config, case)
        trace = traces[key]
        for label, cfg in (("host", case.nmp.host()), ("RecNMP", case.nmp)):
            if (key, repr(cfg)) in seen:  # a row that changes only what follows the emulation
                continue
            seen.add((key, repr(cfg)))
            raw = {}
            for timing in ("command", "fast"):
                t0 = time.perf_counter()
                raw[timing] = emulate(trace, replace(cfg, timing=timing)).raw
                spent[timing] += time.perf_counter() - t0
            c = raw["fast"]["cycles"] / raw["command"]["cycles"]
            e = raw["fast"]["energy_pj"] / raw["command"]["energy_pj"]
            worst["cycles"] = max(worst["cycles"], abs(c - 1))
            worst["energy"] = max(worst["energy"], abs(e - 1))
            same = raw["fast"]["batch_cache_hits"] == raw["command"]["batch_cache_hits"]
            row = f"{case.sweep} " + ",".join(f"{k}={v}" for k, v in case.params.items())
            print(f"| {row} | {label} | {c:.3f} | {e:.3f} | {'yes' if same else 'NO'} |")
    print(f"\nworst: cycles {worst['cycles']:.1%}, energy {worst['energy']:.1%} off the command "
          f"model; whole sweep (host and RecNMP): command {spent['command']:.2f} s, fast "
          f"{spent['fast']:.2f} s ({spent['command'] / spent['fast']:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rmc1")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--table-mb", type=float, default=256.0)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--threads", default=f"1,{get_num_threads()}")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--agreement", action="store_true")
    p.add_argument("--system", default="recnmp", choices=("recnmp", "recnmp-2x2"))
    args = p.parse_args()
    speed(args)
    if args.agreement:
        agreement(args)


if __name__ == "__main__":
    main()
