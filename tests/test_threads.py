"""The thread pool: settable size, results independent of it, concurrent callers, and safety
in a forked child (a DataLoader-style worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import recengine
from conftest import assert_pooled_close, run_forked
from recengine import EmbeddingCollection, EmbeddingTable, _core

STORAGE = ("fp32", "fp16", "bf16", "int8", "int4")


def big_batch(num_rows: int, seed: int, batch: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """A batch far above the core's serial threshold, with skewed bag sizes."""
    r = np.random.default_rng(seed)
    lengths = np.where(r.random(batch) < 0.05, 200, r.integers(0, 40, batch))
    return r.integers(0, num_rows, int(lengths.sum())), lengths


def test_set_and_get(restore_threads: None) -> None:
    for n in (1, 2, 3, 8, 1):
        recengine.set_num_threads(n)
        assert recengine.get_num_threads() == n
        assert recengine.build_info()["threads"] == n
    for bad in (0, -3, 2.0, "4", None, True):
        with pytest.raises(ValueError):
            recengine.set_num_threads(bad)  # type: ignore[arg-type]
    assert recengine.get_num_threads() == 1
    with pytest.raises(ValueError):
        _core.set_num_threads(0)
    with pytest.raises(ValueError):
        _core.set_num_threads(10**6)
    assert recengine.get_num_threads() == 1


@pytest.mark.parametrize("storage", STORAGE)
def test_results_identical_for_any_thread_count(storage: str, restore_threads: None) -> None:
    table = EmbeddingTable.random(5000, 48, dtype=storage, seed=1)
    idx, lengths = big_batch(5000, 2)
    w = np.random.default_rng(3).standard_normal(idx.size).astype(np.float32)
    results = {}
    for n in (1, 2, 3):
        recengine.set_num_threads(n)
        results[n] = [table.lookup(idx, lengths=lengths, mode=m) for m in ("sum", "mean", "max")]
        results[n].append(table.lookup(idx, lengths=lengths, weights=w, padding_idx=7))
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            np.testing.assert_array_equal(a, b)
    assert_pooled_close(results[2][0], table.to_numpy(), idx, lengths=lengths)


def test_collection_identical_for_any_thread_count(restore_threads: None) -> None:
    coll = EmbeddingCollection([EmbeddingTable.random(3000, d, dtype=dt, seed=d)
                                for d, dt in ((16, "fp32"), (40, "int8"), (7, "int4"))])
    r = np.random.default_rng(4)
    lengths = r.integers(0, 50, (3, 1500))
    flat = np.concatenate([r.integers(0, 3000, int(ln.sum())) for ln in lengths])
    outs = []
    for n in (1, 2):
        recengine.set_num_threads(n)
        outs.append(coll.lookup(flat, lengths=lengths))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_many_python_threads_share_one_table(restore_threads: None) -> None:
    recengine.set_num_threads(2)
    table = EmbeddingTable.random(4000, 32, dtype="int8", seed=5)
    rows = table.to_numpy()
    inputs = []
    for k in range(16):
        r = np.random.default_rng(100 + k)
        batch = 50 if k % 2 else 800  # some serial, some parallel calls
        lengths = r.integers(0, 30, batch)
        inputs.append((r.integers(0, 4000, int(lengths.sum())), lengths, ("sum", "mean",
                                                                            "max")[k % 3]))
    expected = [table.lookup(i, lengths=ln, mode=m) for i, ln, m in inputs]
    for (i, ln, m), e in zip(inputs[:3], expected[:3]):
        assert_pooled_close(e, rows, i, lengths=ln, mode=m)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> int:
        start.wait()
        done = 0
        for rep in range(12):
            k = (t * 5 + rep) % len(inputs)
            i, ln, m = inputs[k]
            got = table.lookup(i, lengths=ln, mode=m)
            if not np.array_equal(got, expected[k]):
                errors.append(AssertionError(f"thread {t} rep {rep}: wrong result"))
            if rep % 4 == 3:
                try:
                    table.lookup(np.array([0, 99999]), offsets=np.array([0]))
                    errors.append(AssertionError("no IndexError"))
                except IndexError as e:
                    if "99999" not in str(e):
                        errors.append(e)
            done += 1
        return done

    with ThreadPoolExecutor(8) as ex:
        counts = list(ex.map(worker, range(8)))
    assert counts == [12] * 8
    assert not errors, errors[:3]


def test_thread_count_changes_during_lookups(restore_threads: None) -> None:
    table = EmbeddingTable.random(3000, 32, seed=6)
    idx, lengths = big_batch(3000, 7, batch=600)
    expected = table.lookup(idx, lengths=lengths)
    stop = threading.Event()
    bad: list[str] = []

    def looker() -> None:
        while not stop.is_set():
            if not np.array_equal(table.lookup(idx, lengths=lengths), expected):
                bad.append("mismatch")

    threads = [threading.Thread(target=looker) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for k in range(60):
            recengine.set_num_threads(1 + k % 3)
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a lookup thread hung"
    assert not bad


def test_lookup_releases_the_gil(restore_threads: None) -> None:
    """While a long lookup runs in one thread, pure-Python code in another keeps running."""
    recengine.set_num_threads(1)
    table = EmbeddingTable.random(50_000, 64, seed=12)
    idx = np.random.default_rng(13).integers(0, 50_000, 1_000_000)
    lengths = np.full(10_000, 100)
    table.lookup(idx, lengths=lengths)

    def spin(seconds: float) -> float:
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count / seconds

    alone = spin(0.1)
    done = threading.Event()

    def work() -> None:
        for _ in range(8):
            table.lookup(idx, lengths=lengths)
        done.set()

    worker = threading.Thread(target=work)
    count = 0
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        count += 1
        time.perf_counter()  # keep the loop body like spin()'s
    elapsed = time.perf_counter() - start
    worker.join()
    # With the GIL held during lookups this thread would only run between them (a few %).
    assert count / elapsed > 0.25 * alone, (count / elapsed, alone)


# ---------------------------------------------------------------------------------------------
# fork


def _child_lookups(conn: Any, table: EmbeddingTable, idx: np.ndarray, lengths: np.ndarray) -> None:
    try:
        first = table.lookup(idx, lengths=lengths)
        recengine.set_num_threads(2)
        second = table.lookup(idx, lengths=lengths, mode="max")
        conn.send(("ok", first, second, recengine.get_num_threads()))
    except BaseException as e:
        conn.send(("error", repr(e), None, None))
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("threads", [1, 2])
def test_lookup_in_forked_child(restore_threads: None, threads: int) -> None:
    recengine.set_num_threads(2)
    table = EmbeddingTable.random(4000, 64, seed=8)
    idx, lengths = big_batch(4000, 9)
    expected = table.lookup(idx, lengths=lengths)  # starts the parent's pool
    expected_max = table.lookup(idx, lengths=lengths, mode="max")
    recengine.set_num_threads(threads)
    msg = run_forked(_child_lookups, (table, idx, lengths))
    assert msg[0] == "ok", msg[1]
    np.testing.assert_array_equal(msg[1], expected)
    np.testing.assert_array_equal(msg[2], expected_max)
    assert msg[3] == 2
    # and the parent's pool still works after the fork
    np.testing.assert_array_equal(table.lookup(idx, lengths=lengths), expected)


def _child_loads_and_pools(conn: Any, path: str, idx: np.ndarray, lengths: np.ndarray) -> None:
    try:
        t = EmbeddingTable.load(path)
        conn.send(("ok", t.lookup(idx, lengths=lengths), None, None))
    except BaseException as e:
        conn.send(("error", repr(e), None, None))
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_after_concurrent_parent_lookups(tmp_path: Path,
                                                      restore_threads: None) -> None:
    """Fork while other Python threads of the parent are inside lookups."""
    recengine.set_num_threads(2)
    table = EmbeddingTable.random(3000, 32, seed=10)
    path = tmp_path / "t.npy"
    np.save(path, table.to_numpy())
    idx, lengths = big_batch(3000, 11, batch=1000)
    expected = table.lookup(idx, lengths=lengths)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            table.lookup(idx, lengths=lengths)

    workers = [threading.Thread(target=busy) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.05)
        msg = run_forked(_child_loads_and_pools, (str(path), idx, lengths))
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert msg[0] == "ok", msg[1]
    np.testing.assert_array_equal(msg[1], expected)


# ---------------------------------------------------------------------------------------------
# environment


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("3", 3)])
def test_num_threads_environment_variable(tmp_path: Path, value: str, expected: int) -> None:
    env = dict(os.environ, RECENGINE_NUM_THREADS=value)
    code = ("import recengine, numpy as np; t = recengine.EmbeddingTable.random(2000, 32); "
            "i = np.arange(40000) % 2000; t.lookup(i, lengths=np.full(1000, 40)); "
            "print(recengine.get_num_threads(), recengine.build_info()['threads'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(expected)] * 2
