"""The memory a co-located server holds: instances as threads sharing one copy of the model,
against instances as worker processes with a copy each (Hercules' ``sharing``).

    python benches/hercules_memory.py                        # all eight, scale 0.05, 2 instances
    python benches/hercules_memory.py --models rmc1,rmc2 --scale 0.2 --instances 4

Each case runs in a fresh interpreter: it builds the model, starts
``Server(model, workers=instances, processes=...)``, serves 40 queries (so that every worker
has run forwards and touched its tables), and sums the proportional set size (shared pages
split among the processes that map them, from ``/proc/<pid>/smaps_rollup``) of the server's
process and its worker processes. The table prints it next to the model's bytes (tables and
dense weights, :func:`recengine.hercules.footprint`) and the bytes Hercules' footprint model
predicts (one copy for threads, one per instance for processes). The process server's parent
holds a copy too (it built the model), which a deployment need not.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from typing import Any


def _measure(model_name: str, scale: float, instances: int, processes: bool) -> dict[str, Any]:
    import os

    import numpy as np
    import recengine.models as rm
    from recengine.hercules import Schedule, footprint
    from recengine.hercules.schedule import pss_bytes
    from recengine.sched import Policy
    from recengine.serving import Server

    model = rm.build(model_name, scale=scale)
    bytes_ = footprint(model)
    with Server(model, workers=instances, processes=processes) as server:
        n = 40
        server.run(np.arange(n) * 0.002, np.full(n, 128), Policy(32))
        sizes = [pss_bytes(p) for p in [os.getpid(), *server.worker_pids] if p]
        if any(size is None for size in sizes):
            raise RuntimeError("/proc/<pid>/smaps_rollup cannot be read here")
        total = sum(size for size in sizes if size is not None)
    schedule = Schedule(instances, 1, 32, sharing="processes" if processes else "threads")
    return {"model": model_name, "sharing": schedule.sharing, "measured": total,
            "model_bytes": bytes_.table_bytes + bytes_.dense_bytes,
            "predicted": bytes_.of(schedule)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="rmc1,rmc2,rmc3,wnd,mtwnd,ncf,din,dien")
    p.add_argument("--scale", type=float, default=0.05)
    p.add_argument("--instances", type=int, default=2)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    gb = 2**30
    print(f"{args.instances} instances, scale {args.scale:g}\n")
    print("| model | model GB | threads: measured GB (predicted) | processes: measured GB "
          "(predicted) | processes / threads |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        cases = {}
        for processes in (False, True):
            with ctx.Pool(1) as pool:
                cases[processes] = pool.apply(_measure, (name, args.scale, args.instances,
                                                         processes))
        t, pr = cases[False], cases[True]
        print(f"| {name} | {t['model_bytes'] / gb:.2f} | {t['measured'] / gb:.2f} "
              f"({t['predicted'] / gb:.2f}) | {pr['measured'] / gb:.2f} "
              f"({pr['predicted'] / gb:.2f}) | {pr['measured'] / t['measured']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
