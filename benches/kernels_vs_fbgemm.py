"""recengine's pooling kernels against torch's own FBGEMM kernels, on one shape of tables.

Torch pools float32 tables with ``nn.EmbeddingBag`` and 8-bit rowwise tables with
``quantized.embedding_bag_byte_rowwise_offsets``, both FBGEMM's JIT-generated kernels inside
torch, one call per table then ``torch.cat``; recengine pools every table in one
``EmbeddingCollection.lookup``. The two take turns call by call on the same index sets (enough
sets that calls miss the cache), on the thread count given for both.

Usage::

    python benches/kernels_vs_fbgemm.py --threads 1 --json benches/results/kernels_fbgemm_t1.json
    python benches/kernels_vs_fbgemm.py --tables 8 --rows 500000 --dim 64 --pooling 80 \\
        --batches 1,16,64,256,1024 --dtypes fp32,int8 --threads 16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from typing import Any

import numpy as np
import recengine
import torch
from recengine.bench import (
    Stage,
    _alternate,
    _Timer,
    index_set_count,
    make_index_sets,
    outputs_agree,
)
from recengine.table import EmbeddingTable


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--pooling", type=int, default=80, help="lookups per bag")
    p.add_argument("--batches", default="1,16,64,256,1024")
    p.add_argument("--dtypes", default="fp32,int8")
    p.add_argument("--threads", type=int, default=1, help="for recengine and torch alike")
    p.add_argument("--repeats", type=int, default=60, help="most timed calls each per case")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of calls each per case")
    p.add_argument("--json", help="write the rows here")
    return p.parse_args()


def main() -> int:
    a = parse()
    torch.set_num_threads(a.threads)
    recengine.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    rows: list[dict[str, Any]] = []
    print(f"{a.tables} tables x {a.rows:,} rows x {a.dim}, {a.pooling} lookups a bag, "
          f"{a.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, SIMD {recengine.build_info()['simd']}", flush=True)
    print(f"{'dtype':>5} {'batch':>6} {'recengine us':>13} {'torch us':>10} {'ratio':>7}")
    for dtype in a.dtypes.split(","):
        tables = [EmbeddingTable.random(a.rows, a.dim, seed=t) for t in range(a.tables)]
        if dtype != "fp32":
            tables = [t.quantize(dtype) for t in tables]
        stage = Stage(tables, torch, numpy=False)
        specs = stage.specs([a.pooling] * a.tables)
        for batch in batches:
            lookups = batch * a.pooling * a.tables
            count = index_set_count(lookups * tables[0].row_bytes, lookups)
            sets = make_index_sets(specs, batch, count=count, seed=batch, torch=torch)
            timers = [_Timer(stage.runner(impl), sets, warmup=2) for impl in ("recengine", "torch")]
            _alternate(timers, a.repeats, a.budget)
            ok, err = outputs_agree(timers[0].first, timers[1].first, a.pooling)
            if not ok:
                print(f"outputs differ for {dtype} batch {batch}: max error {err}",
                      file=sys.stderr)
                return 1
            ours, theirs = (statistics.median(t.times) for t in timers)
            row = dict(dtype=dtype, batch=batch, threads=a.threads, recengine_s=ours,
                       torch_s=theirs, ratio=theirs / ours, calls=len(timers[0].times))
            rows.append(row)
            print(f"{dtype:>5} {batch:>6} {ours * 1e6:>13.1f} {theirs * 1e6:>10.1f} "
                  f"{theirs / ours:>6.2f}x", flush=True)
        del stage, tables
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(config=vars(a), build=recengine.build_info(),
                           torch=torch.__version__, rows=rows), f, indent=1)
    ratios = [r["ratio"] for r in rows]
    print(f"geomean {float(np.exp(np.mean(np.log(ratios)))):.2f}x, min {min(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
