"""Pooling benchmarks: recengine vs torch vs numpy on DeepRecInfra model shapes, grouped by
(model, batch, dtype) so the table shows the three side by side, and a benchmark showing that
lookups release the GIL.

Run with ``pytest benches --benchmark-enable`` (see ``conftest.py`` for the size options).
Each benchmark records whether its implementation's output matched the slow numpy reference
in ``extra_info["correct"]`` (as orjson's benchmarks do) and fails when it did not.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest
import recengine
from recengine.bench import default_threads, make_index_sets
from recengine.shapes import TableSpec


def test_pooling(benchmark: Any, bench_env: Any, pooling_case: tuple[str, int, str, str]) -> None:
    """The model's whole embedding stage: one recengine collection call, torch's per-table
    EmbeddingBag (or 8-bit rowwise op) loop + cat, or numpy's per-table gather + sum.
    ``pooling_case`` is (model, batch, dtype, impl), parametrised in ``conftest.py``."""
    model, batch, dtype, impl = pooling_case
    if impl == "torch" and bench_env.torch is None:
        pytest.skip("torch is not installed")
    stage, specs = bench_env.stage(model, dtype)
    sets = bench_env.index_sets(model, dtype, batch)
    correct = bench_env.agrees(model, dtype, batch, stage.run(impl, sets[0]))
    lookups = sets[0].lookups
    benchmark.group = f"{model}-batch-{batch}-{dtype}"
    benchmark.extra_info.update({
        "impl": impl,
        "model": model,
        "batch": batch,
        "dtype": dtype,
        "threads": bench_env.threads,
        "tables": len(specs),
        "table_mb": round(stage.nbytes / 2**20, 1),
        "lookups": lookups,
        "bytes_per_call": stage.bytes_per_call(sets[0]),
        "index_sets": len(sets),
        "correct": correct,
    })
    run = stage.runner(impl)
    cycle = itertools.cycle(sets)
    benchmark(lambda: run(next(cycle)))
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["lookups_per_s"] = lookups / stats.stats.median
    assert correct, f"{impl} disagrees with the numpy reference on {model} batch {batch}"


# --------------------------------------------------------------------------------------------
# the GIL


_GIL_CALLS = 12  # calls per Python thread


@pytest.fixture(scope="module")
def gil_workload(bench_env: Any) -> Any:
    """One 64 MiB table and calls of 256 bags x 80 lookups (a few ms each), with the core set
    to one thread so every call runs on the calling Python thread."""
    table = recengine.EmbeddingTable.random(512 * 1024, 32, seed=7)
    spec = TableSpec(table.num_rows, table.dim, 80)
    sets = make_index_sets([spec], batch=256, count=2 * _GIL_CALLS, seed=3)
    saved = recengine.get_num_threads()
    recengine.set_num_threads(1)
    yield table, sets
    recengine.set_num_threads(saved)


def _serial(table: Any, sets: list[Any]) -> None:
    for s in sets:
        table.lookup(s.indices[0], offsets=s.offsets[0])


def _two_threads(table: Any, sets: list[Any]) -> None:
    half = len(sets) // 2
    threads = [threading.Thread(target=_serial, args=(table, part))
               for part in (sets[:half], sets[half:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("mode", ["serial", "two-threads"])
def test_gil_lookups(benchmark: Any, gil_workload: Any, mode: str) -> None:
    """24 lookups on one Python thread, or 12 on each of two: with the GIL released the
    two threads take about half the time on a machine with two free cores."""
    table, sets = gil_workload
    benchmark.group = "gil: 24 lookups of 256 x 80, core threads = 1"
    benchmark.extra_info.update({"mode": mode, "cores": default_threads()})
    fn: Callable[[Any, list[Any]], None] = _serial if mode == "serial" else _two_threads
    benchmark(fn, table, sets)


@pytest.mark.skipif(default_threads() < 2, reason="needs two cores")
def test_gil_released(gil_workload: Any) -> None:
    """Two Python threads doing lookups finish clearly faster than one doing them all."""
    table, sets = gil_workload
    _serial(table, sets)  # warm up

    def best_of(fn: Callable[[Any, list[Any]], None], n: int = 5) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(table, sets)
            times.append(time.perf_counter() - t0)
        return min(times)

    serial, threaded = best_of(_serial), best_of(_two_threads)
    assert threaded < 0.8 * serial, (
        f"two threads took {threaded * 1e3:.1f} ms vs {serial * 1e3:.1f} ms serially: "
        f"the GIL does not seem to be released during lookups")


def test_lookup_results_do_not_depend_on_threads(gil_workload: Any) -> None:
    """The threaded run computes the same bags as the serial one."""
    table, sets = gil_workload
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = table.lookup(sets[k].indices[0], offsets=sets[k].offsets[0])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        np.testing.assert_array_equal(
            results[k], table.lookup(sets[k].indices[0], offsets=sets[k].offsets[0]))
