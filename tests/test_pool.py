"""Where the core's loops run: on torch's OpenMP team once torch is loaded (so the two share the
cores rather than fight over them), else on the core's own pool. Results must not depend on
which, from any number of Python threads, in a forked child, without torch, and across
thread-count changes of either library."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pytest
import recengine
from conftest import run_forked
from recengine import EmbeddingCollection, EmbeddingTable

torch = pytest.importorskip("torch")
OPENMP = torch.backends.openmp.is_available()
needs_openmp = pytest.mark.skipif(not OPENMP, reason="this torch has no OpenMP runtime")


@pytest.fixture
def restore_pool(restore_threads: None) -> Iterator[None]:
    """Put the pool mode and torch's thread count back after the test."""
    mode = recengine.get_thread_pool()["mode"]
    torch_threads = torch.get_num_threads()
    try:
        yield
    finally:
        recengine.set_thread_pool(mode)
        torch.set_num_threads(torch_threads)


def batch(num_rows: int, seed: int, bags: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Far above the core's serial threshold, so every call runs in parallel."""
    r = np.random.default_rng(seed)
    lengths = r.integers(0, 60, bags)
    return r.integers(0, num_rows, int(lengths.sum())), lengths


def all_modes(table: EmbeddingTable, idx: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    w = np.random.default_rng(5).standard_normal(idx.size).astype(np.float32)
    return [table.lookup(idx, lengths=lengths, mode=m) for m in ("sum", "mean", "max")] + [
        table.lookup(idx, lengths=lengths, weights=w, padding_idx=3)]


@needs_openmp
def test_torch_loaded_means_torch_team(restore_pool: None) -> None:
    recengine.set_thread_pool("auto")
    info = recengine.get_thread_pool()
    assert info["in_use"] == "torch" and info["mode"] == "auto"
    assert "omp" in os.path.basename(info["library"])  # libgomp, libiomp5 or libomp
    assert recengine.build_info()["pool"] == "torch"
    recengine.set_thread_pool("own")
    assert recengine.get_thread_pool() == {"mode": "own", "in_use": "own", "library": None}


def test_bad_pool_mode_is_a_value_error(restore_pool: None) -> None:
    for bad in ("gomp", "", "TORCH", 3, None):
        with pytest.raises(ValueError):
            recengine.set_thread_pool(bad)  # type: ignore[arg-type]


@needs_openmp
@pytest.mark.parametrize("storage", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_results_identical_on_torch_team_and_own_pool(storage: str, restore_pool: None) -> None:
    recengine.set_num_threads(2)
    table = EmbeddingTable.random(6000, 40, dtype=storage, seed=2)
    idx, lengths = batch(6000, 3)
    recengine.set_thread_pool("torch")
    on_team = all_modes(table, idx, lengths)
    recengine.set_thread_pool("own")
    on_own = all_modes(table, idx, lengths)
    recengine.set_num_threads(1)
    serial = all_modes(table, idx, lengths)
    for a, b, c in zip(on_team, on_own, serial):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@needs_openmp
def test_torch_ops_between_core_calls(restore_pool: None) -> None:
    """Alternating with torch's own parallel ops (the case the team exists for)."""
    recengine.set_thread_pool("auto")
    recengine.set_num_threads(2)
    torch.set_num_threads(2)
    table = EmbeddingTable.random(5000, 32, seed=4)
    weight = torch.from_numpy(table.to_numpy())
    bag = torch.nn.EmbeddingBag.from_pretrained(weight, mode="sum")
    idx, lengths = batch(5000, 6)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    want = table.lookup(idx, lengths=lengths)
    x = torch.randn(256, 256)
    for _ in range(20):
        with torch.no_grad():
            theirs = bag(torch.from_numpy(idx), torch.from_numpy(offsets))
            x = torch.tanh(x @ x.T / 256)
        np.testing.assert_array_equal(table.lookup(idx, lengths=lengths), want)
        np.testing.assert_allclose(theirs.numpy(), want, rtol=1e-5, atol=1e-4)


@needs_openmp
def test_several_python_threads_at_once(restore_pool: None) -> None:
    """Each Python thread that calls the core gets its own OpenMP team; none waits on another's
    and every answer is right."""
    recengine.set_thread_pool("auto")
    recengine.set_num_threads(2)
    tables = [EmbeddingTable.random(3000, 24 + 8 * k, seed=k) for k in range(3)]
    coll = EmbeddingCollection(tables)
    work = [batch(3000, 10 + k, bags=800) for k in range(8)]
    want = [coll.lookup([i] * 3, lengths=[n] * 3) for i, n in work]

    def job(k: int) -> bool:
        i, n = work[k % len(work)]
        with torch.no_grad():
            torch.ones(64, 64) @ torch.ones(64, 64)  # this thread's torch team, too
        return bool(np.array_equal(coll.lookup([i] * 3, lengths=[n] * 3), want[k % len(work)]))

    with ThreadPoolExecutor(max_workers=6) as ex:
        assert all(ex.map(job, range(48)))


@needs_openmp
def test_errors_on_the_team_are_raised_and_the_team_still_works(restore_pool: None) -> None:
    recengine.set_thread_pool("torch")
    recengine.set_num_threads(2)
    table = EmbeddingTable.random(1000, 32, seed=1)
    idx, lengths = batch(1000, 2)
    good = table.lookup(idx, lengths=lengths)
    bad = idx.copy()
    bad[len(bad) // 2] = 1000
    with pytest.raises(IndexError, match="out of range"):
        table.lookup(bad, lengths=lengths)
    np.testing.assert_array_equal(table.lookup(idx, lengths=lengths), good)


@needs_openmp
def test_thread_counts_changed_mid_run(restore_pool: None) -> None:
    recengine.set_thread_pool("auto")
    table = EmbeddingTable.random(4000, 64, dtype="fp16", seed=3)
    idx, lengths = batch(4000, 4)
    recengine.set_num_threads(1)
    want = table.lookup(idx, lengths=lengths)
    for ours, theirs in ((2, 1), (1, 2), (3, 2), (2, 2), (4, 1)):
        recengine.set_num_threads(ours)
        torch.set_num_threads(theirs)
        with torch.no_grad():
            torch.randn(128, 128) @ torch.randn(128, 128)
        assert recengine.get_num_threads() == ours
        np.testing.assert_array_equal(table.lookup(idx, lengths=lengths), want)


def _child(conn: Any, table: EmbeddingTable, idx: np.ndarray, lengths: np.ndarray) -> None:
    try:
        pool = recengine.get_thread_pool()["in_use"]
        out = table.lookup(idx, lengths=lengths)
        conn.send(("ok", out, pool))
    except BaseException as e:
        conn.send(("error", repr(e), None))
    finally:
        conn.close()


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_after_the_team_ran(restore_pool: None) -> None:
    """OpenMP's threads do not survive fork: a child must use the core's own pool, not wait
    for the parent's team."""
    recengine.set_thread_pool("auto")
    recengine.set_num_threads(2)
    table = EmbeddingTable.random(4000, 32, seed=8)
    idx, lengths = batch(4000, 9)
    want = table.lookup(idx, lengths=lengths)  # the parent's team has run
    msg = run_forked(_child, (table, idx, lengths))
    assert msg[0] == "ok", msg[1]
    np.testing.assert_array_equal(msg[1], want)
    assert msg[2] == "own"
    np.testing.assert_array_equal(table.lookup(idx, lengths=lengths), want)
    assert recengine.get_thread_pool()["in_use"] == "torch"


def _run(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_without_torch_the_own_pool_runs() -> None:
    out = _run("""
        import sys
        sys.modules["torch"] = None  # torch cannot be imported here
        import numpy as np, recengine
        t = recengine.EmbeddingTable.random(3000, 32, seed=1)
        idx = np.random.default_rng(0).integers(0, 3000, 60_000)
        a = t.lookup(idx, lengths=np.full(2000, 30))
        recengine.set_num_threads(1)
        b = t.lookup(idx, lengths=np.full(2000, 30))
        assert np.array_equal(a, b)
        try:
            recengine.set_thread_pool("torch")
        except ValueError as e:
            print("refused:", e)
        print(recengine.get_thread_pool()["in_use"])
        """, RECENGINE_NUM_THREADS="2")
    assert out.splitlines()[-1] == "own"
    assert "torch's OpenMP runtime is not loaded" in out


@needs_openmp
def test_thread_count_follows_torch_unless_set() -> None:
    out = _run("""
        import threading
        import torch, recengine
        torch.set_num_threads(3)
        a = recengine.get_num_threads()
        torch.set_num_threads(1)
        b = recengine.get_num_threads()
        # A thread that never ran a torch op: OpenMP's own default would be every core.
        seen = []
        t = threading.Thread(target=lambda: seen.append(recengine.get_num_threads()))
        t.start(); t.join()
        torch.set_num_threads(2)
        t = threading.Thread(target=lambda: seen.append(recengine.get_num_threads()))
        t.start(); t.join()
        recengine.set_num_threads(2)
        torch.set_num_threads(5)
        print(a, b, *seen, recengine.get_num_threads())
        """, OMP_NUM_THREADS="4")
    assert out == "3 1 1 2 2"


@needs_openmp
def test_env_chooses_the_pool() -> None:
    code = """
        import torch, recengine
        print(recengine.get_thread_pool()["in_use"], recengine.get_num_threads())
        """
    assert _run(code, RECENGINE_POOL="own", RECENGINE_NUM_THREADS="2") == "own 2"
    assert _run(code, RECENGINE_POOL="torch", OMP_NUM_THREADS="2") == "torch 2"


@needs_openmp
def test_gradients_and_table_making_identical_on_both_pools(restore_pool: None) -> None:
    """The dense backward's parallel sort, random tables and decoding run on torch's team too;
    their results must be the same bits on either pool."""
    recengine.set_num_threads(3)
    rng = np.random.default_rng(11)
    idx = rng.integers(0, 5000, 150_000)  # above the parallel sort's threshold
    offsets = np.arange(0, idx.size, 50)
    grad = rng.standard_normal((offsets.size, 16)).astype(np.float32)
    got = {}
    for pool in ("torch", "own"):
        recengine.set_thread_pool(pool)
        table = EmbeddingTable.random(70_000, 16, dtype="bf16", seed=5)
        got[pool] = (recengine.embedding_bag_backward(grad, 5000, idx, offsets),
                     table.to_numpy())
    for a, b in zip(got["torch"], got["own"]):
        np.testing.assert_array_equal(a, b)
    recengine.set_num_threads(1)
    np.testing.assert_array_equal(recengine.embedding_bag_backward(grad, 5000, idx, offsets),
                                  got["torch"][0])
