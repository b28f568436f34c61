"""The numpy-only path (torch never imported): median microseconds of ``EmbeddingTable.lookup``
at batch 1-1024 on two tables, 2 threads, each call on its own random indices. Run it against
two builds to compare them, e.g. wheels installed into two folders::

    PYTHONPATH=/tmp/old python benches/no_torch.py
    PYTHONPATH=/tmp/new python benches/no_torch.py
"""

from __future__ import annotations

import statistics
import sys
import timeit

import numpy as np
import recengine

CASES = ((1_000_000, 64, 20), (2_000_000, 32, 80))  # rows, dim, lookups per bag
BATCHES = (1, 16, 64, 256, 1024)


def main() -> None:
    if "torch" in sys.modules:
        sys.exit("torch is imported: this measures the path without it")
    recengine.set_num_threads(2)
    for rows, dim, per_bag in CASES:
        table = recengine.EmbeddingTable.random(rows, dim, seed=0)
        rng = np.random.default_rng(0)
        cells = []
        for batch in BATCHES:
            sets = [rng.integers(0, rows, batch * per_bag) for _ in range(8)]
            offsets = np.arange(0, batch * per_bag, per_bag)
            times = []
            for i in range(max(40, 4000 // batch)):
                t0 = timeit.default_timer()
                table.lookup(sets[i % 8], offsets=offsets)
                times.append(timeit.default_timer() - t0)
            cells.append(f"b{batch} {statistics.median(times[5:]) * 1e6:.1f} us")
        print(f"{rows:,} x {dim}, {per_bag} a bag: " + ", ".join(cells))
    assert "torch" not in sys.modules


if __name__ == "__main__":
    main()
