"""What the oblivious lookups cost: each defence against the plain lookup, call by call in turn
on the same ids, over table sizes and batch sizes.

A batch is ``batch`` bags of one id each (the static and one-hot features the identification
attack reads), fp32 rows of ``dim`` values. The plain lookup and the scan run on the
package's thread pool as users get them; the ORAM and the padding on one thread (an ORAM
client is sequential). A scan call that would take longer than ``max_call_s`` (its time
grows with ``rows x batch``) is not run: its row is extrapolated from the largest batch
measured at that size and says ``estimated: True``.

Example::

    >>> rows = list(measure([1000], [1, 16], budget_s=0.02))
    >>> sorted({r["defence"] for r in rows}), all(r["slowdown"] > 0 for r in rows)
    (['oram', 'pad', 'scan'], True)
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..table import EmbeddingTable, Pad

__all__ = ["DEFENCES", "crossover", "measure", "medians_in_turn"]

#: The defences measured, in order.
DEFENCES: tuple[str, ...] = ("scan", "oram", "pad")


def medians_in_turn(fns: Sequence[Callable[[], Any]], budget_s: float,
                    max_samples: int = 200) -> list[float]:
    """The median seconds of each of ``fns``, called in turn (each going first as often) until
    ``budget_s`` is spent and each has run at least 3 times, or once if one call already
    took longer than the budget.

    Example::

        >>> a, b = medians_in_turn([lambda: None, lambda: sum(range(10_000))], 0.01)
        >>> a < b
        True
    """
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    start = time.perf_counter()
    while True:
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
        order.reverse()
        spent = time.perf_counter() - start
        n = len(times[0])
        if n >= max_samples or (spent >= budget_s and (n >= 3 or spent >= 3 * budget_s)):
            return [float(np.median(t)) for t in times]


def measure(table_rows: Sequence[int], batches: Sequence[int], dim: int = 64,
            pad_count: int = 8, budget_s: float = 0.3, max_call_s: float = 2.0,
            defences: Sequence[str] = DEFENCES, seed: int = 0,
            status: Callable[[str], None] = lambda m: None) -> Iterator[dict[str, Any]]:
    """One row a (defence, table size, batch): ``attack: "cost"``, ``defence``, ``metric:
    "lookups_per_s"`` with ``value`` the defence's and ``baseline`` the plain lookup's,
    ``rows``, ``batch``, ``lookups_per_s``, ``latency_us`` (a call), ``slowdown`` (against
    ``plain_lookups_per_s`` measured in the same turns), ``estimated``; ORAM rows add
    ``levels`` (each ORAM's), ``blocks_per_lookup`` (read, and as many written) and
    ``stash_max`` (each stash's high-water mark so far), pad rows
    ``count``."""
    unknown = [d for d in defences if d not in DEFENCES]
    if unknown:
        raise ValueError(f"unknown defences {unknown}; expected some of {', '.join(DEFENCES)}")
    rng = np.random.default_rng(seed)
    for n in table_rows:
        status(f"cost: {n:,} rows x {dim} fp32" + (", building the ORAM" if "oram" in
                                                    defences else ""))
        table = EmbeddingTable(rng.standard_normal((n, dim), dtype=np.float32))
        oram = table.oram(seed=seed) if "oram" in defences else None
        last_scan: Optional[tuple[int, float]] = None
        for b in batches:
            ids = rng.integers(0, n, b)
            ones = np.ones(b, dtype=np.int64)
            call = partial(table.lookup, ids, lengths=ones)
            calls: dict[str, Callable[[], Any]] = {"plain": call}
            est_scan = None
            for d in defences:
                if d == "scan" and last_scan is not None:
                    est_scan = last_scan[1] * b / last_scan[0]
                    if est_scan > max_call_s:
                        continue
                how: Any = Pad(count=pad_count, seed=seed) if d == "pad" else d
                calls[d] = partial(call, oblivious=how)
            secs = dict(zip(calls, medians_in_turn(list(calls.values()), budget_s)))
            if "scan" in secs:
                last_scan = (b, secs["scan"])
            for d in defences:
                estimated = d not in secs
                s = est_scan if estimated else secs[d]
                assert s is not None
                row: dict[str, Any] = {
                    "attack": "cost", "defence": d, "metric": "lookups_per_s",
                    "value": b / s, "baseline": b / secs["plain"], "rows": n, "batch": b,
                    "lookups_per_s": b / s, "latency_us": 1e6 * s,
                    "slowdown": s / secs["plain"], "plain_lookups_per_s": b / secs["plain"],
                    "estimated": estimated}
                if d == "oram" and oram is not None:
                    row["levels"] = list(oram.levels)
                    row["blocks_per_lookup"] = 4 * sum(oram.levels)
                    row["stash_max"] = list(oram.stash_max)
                if d == "pad":
                    row["count"] = pad_count
                yield row


def crossover(rows: Sequence[dict[str, Any]]) -> dict[int, Optional[int]]:
    """By batch, the largest table size (rows) where the scan served more lookups/s than the
    ORAM (None where it never did).

    Example::

        >>> r = [{"attack": "cost", "defence": d, "rows": n, "batch": 1, "lookups_per_s": v}
        ...      for d, n, v in [("scan", 100, 9), ("oram", 100, 5), ("scan", 1000, 1),
        ...                      ("oram", 1000, 5)]]
        >>> crossover(r)
        {1: 100}
    """
    speed = {(r["defence"], r["rows"], r["batch"]): r["lookups_per_s"] for r in rows
             if r.get("attack") == "cost"}
    out: dict[int, Optional[int]] = {}
    for (d, n, b), v in sorted(speed.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if d != "scan" or ("oram", n, b) not in speed:
            continue
        out.setdefault(b, None)
        if v > speed[("oram", n, b)]:
            out[b] = n
    return out
