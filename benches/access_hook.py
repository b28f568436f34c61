"""What the access hook (``recengine.privacy.record``) costs a lookup: off, and recording.

Times ``EmbeddingTable.lookup`` three ways in one process, call by call in turn on the same
data: as shipped with no recorder active, the same method without the hook's two lines (what
it was before the hook), and inside ``record()``. Prints the median microseconds per call and
the ratios.

    python benches/access_hook.py [--batches 1,64,1024] [--pooling 20] [--calls 2000]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any, Callable, Optional

import numpy as np
import recengine as rc
from recengine._convert import as_padding_idx
from recengine.privacy import record


class _Unhooked(rc.EmbeddingTable):
    """The shipped lookup less the hook: the baseline."""

    def lookup(self, indices: Any, offsets: Any = None, lengths: Any = None,  # type: ignore[override]
               weights: Any = None, mode: str = "sum", padding_idx: Optional[int] = None,
               include_last_offset: bool = False) -> np.ndarray:
        return self._t.lookup(indices, offsets, lengths, weights, mode,
                              as_padding_idx(padding_idx), include_last_offset)


def _median_us(fns: list[Callable[[], Any]], calls: int) -> list[float]:
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(calls):
        for k in order:  # in turn, so drift hits every variant alike
            t0 = time.perf_counter_ns()
            fns[k]()
            times[k].append(time.perf_counter_ns() - t0)
        order.reverse()  # and each goes first as often
    return [float(np.median(t)) / 1e3 for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    array = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    shipped, bare = rc.EmbeddingTable(array), _Unhooked(array)
    print(f"{'batch':>6} {'no hook us':>11} {'hook off us':>12} {'recording us':>13} "
          f"{'off/no hook':>12} {'recording/no hook':>18}")
    for batch in (int(b) for b in args.batches.split(",")):
        ids = rng.integers(0, args.rows, batch * args.pooling)
        lengths = np.full(batch, args.pooling)
        with record():
            shipped.lookup(ids, lengths=lengths)  # warm the recording path
        calls = max(args.calls // max(batch // 64, 1), 50)
        base, off = _median_us([partial(bare.lookup, ids, lengths=lengths),
                                partial(shipped.lookup, ids, lengths=lengths)], calls)
        with record():
            on, = _median_us([partial(shipped.lookup, ids, lengths=lengths)], calls)
        print(f"{batch:>6} {base:>11.2f} {off:>12.2f} {on:>13.2f} {off / base:>12.3f} "
              f"{on / base:>18.2f}")


if __name__ == "__main__":
    main()
