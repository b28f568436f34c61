"""recengine and torch sharing the cores: one table's lookups and an MLP, call by call.

Two questions a user running both in one process has:

* **op**: how fast is ``EmbeddingTable.lookup`` against ``torch.nn.EmbeddingBag`` on the same
  rows when the calls alternate (torch's OpenMP threads still spinning from its last op)? Each
  batch size times torch and recengine in turn, each call on its own random indices, twice:
  recengine on torch's threads (``set_thread_pool("torch")``, what ``"auto"`` picks), then on
  its own pool (``"own"``, the behaviour before), each run with its own torch times.
* **mlp**: what does recengine cost torch's own ops? A torch MLP's forward is timed alone, then
  with a recengine lookup between every two forwards, on each pool.

Usage (prints tables; ``--json FILE`` writes the rows)::

    python benches/coop.py --threads 2
    python benches/coop.py --threads 16 --rows 2000000 --json coop16.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import recengine
import torch

BATCHES = (1, 16, 64, 256, 1024)


def _median_us(times: list[float], skip: int) -> float:
    return statistics.median(times[skip:]) * 1e6


def op_rows(rows: int, dim: int, pooling: int, batches: tuple[int, ...], repeats: int,
            seed: int) -> list[dict[str, Any]]:
    """Per batch: torch's, recengine-on-torch's-threads' and recengine-own-pool's median us."""
    rng = np.random.default_rng(seed)
    weight = torch.rand(rows, dim, generator=torch.Generator().manual_seed(seed))
    bag = torch.nn.EmbeddingBag.from_pretrained(weight, mode="sum")
    table = recengine.EmbeddingTable(weight.numpy())
    return [dict(_op_case(bag, table, rng, rows, pooling, batch, repeats), dim=dim)
            for batch in batches]


def _op_case(bag: torch.nn.EmbeddingBag, table: recengine.EmbeddingTable,
             rng: np.random.Generator, rows: int, pooling: int, batch: int,
             repeats: int) -> dict[str, Any]:
    sets = [rng.integers(0, rows, batch * pooling) for _ in range(12)]
    offsets = np.arange(0, batch * pooling, pooling)
    tsets = [torch.from_numpy(s) for s in sets]
    toffsets = torch.from_numpy(offsets)
    want = table.lookup(sets[0], offsets=offsets)
    with torch.no_grad():
        np.testing.assert_allclose(bag(tsets[0], toffsets).numpy(), want, rtol=1e-4, atol=1e-4)

    def alternate(pool: str) -> tuple[float, float]:
        """torch's and recengine's median us, taking turns, recengine on ``pool``."""
        recengine.set_thread_pool(pool)
        times: tuple[list[float], list[float]] = ([], [])
        with torch.no_grad():
            for turn in range(repeats + 3):
                for j in (turn % 2, 1 - turn % 2):
                    k = (turn * 2 + j) % len(sets)
                    t0 = time.perf_counter()
                    if j == 0:
                        bag(tsets[k], toffsets)
                    else:
                        table.lookup(sets[k], offsets=offsets)
                    times[j].append(time.perf_counter() - t0)
        recengine.set_thread_pool("auto")
        return _median_us(times[0], 3), _median_us(times[1], 3)

    torch_us, rec_us = alternate("torch")
    torch_own_us, own_us = alternate("own")
    return {"kind": "op", "batch": batch, "rows": rows, "pooling": pooling,
            "torch_us": torch_us, "recengine_us": rec_us, "speedup": torch_us / rec_us,
            "torch_beside_own_pool_us": torch_own_us, "own_pool_us": own_us,
            "own_pool_speedup": torch_own_us / own_us}


def mlp_rows(width: int, batch: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    """An MLP's forward alone, and with a recengine lookup between forwards on each pool."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                              torch.nn.Linear(width, width), torch.nn.ReLU(),
                              torch.nn.Linear(width, 1)).eval()
    x = torch.randn(batch, width)
    table = recengine.EmbeddingTable.random(500_000, 32, seed=seed)
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, 500_000, 64 * 80) for _ in range(8)]
    offsets = np.arange(0, 64 * 80, 80)
    out = []
    for setting in ("alone", "torch", "own"):
        times = []
        with torch.no_grad():
            for k in range(repeats + 3):
                if setting != "alone":
                    recengine.set_thread_pool(setting)
                    table.lookup(idx[k % 8], offsets=offsets)
                t0 = time.perf_counter()
                mlp(x)
                times.append(time.perf_counter() - t0)
        out.append({"kind": "mlp", "between": setting, "width": width, "batch": batch,
                    "mlp_us": _median_us(times, 3)})
    recengine.set_thread_pool("auto")
    alone = out[0]["mlp_us"]
    for row in out:
        row["cost"] = row["mlp_us"] / alone
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch's and recengine's threads")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--pooling", type=int, default=80)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--mlp-width", type=int, default=512)
    p.add_argument("--mlp-batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", default=None)
    args = p.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    recengine.set_num_threads(threads)
    print(f"{threads} threads for torch and recengine; table {args.rows:,} x {args.dim}, "
          f"pooling {args.pooling}; medians of {args.repeats} calls, alternating")
    ops = op_rows(args.rows, args.dim, args.pooling, BATCHES, args.repeats, args.seed)
    print(f"{'':>6} {'on torch threads':^34} {'on its own pool':^34}")
    print(f"{'batch':>6} {'torch us':>10} {'recengine us':>13} {'vs torch':>9} "
          f"{'torch us':>10} {'recengine us':>13} {'vs torch':>9}")
    for r in ops:
        print(f"{r['batch']:>6} {r['torch_us']:>10.1f} {r['recengine_us']:>13.1f} "
              f"{r['speedup']:>8.2f}x {r['torch_beside_own_pool_us']:>10.1f} "
              f"{r['own_pool_us']:>13.1f} {r['own_pool_speedup']:>8.2f}x")
    mlps = mlp_rows(args.mlp_width, args.mlp_batch, args.repeats * 2, args.seed)
    print(f"MLP {args.mlp_width}-{args.mlp_width}-{args.mlp_width}-1 forward, batch "
          f"{args.mlp_batch}:")
    for r in mlps:
        label = {"alone": "alone", "torch": "after a recengine lookup on torch's threads",
                 "own": "after a recengine lookup on its own pool"}[r["between"]]
        print(f"  {label:<46} {r['mlp_us']:8.1f} us ({r['cost']:.2f}x alone)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": threads, "build_info": recengine.build_info(),
                       "torch": torch.__version__, "rows": ops + mlps}, f, indent=1)


if __name__ == "__main__":
    main()
