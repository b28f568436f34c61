"""The distributed backend on a local Ray cluster of 2 CPUs, small tables, bounded time."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import recengine  # noqa: E402
from recengine.shard import (  # noqa: E402
    RayShardedEmbedding,
    ShardedEmbedding,
    ShardTable,
    ShardUnavailableError,
    plan,
    save_tables,
)

DTYPES = ("fp32", "int8", "int4", "fp16")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[ShardTable], Path]:
    root = tmp_path_factory.mktemp("tables")
    tabs = [recengine.EmbeddingTable.random(200 + 50 * i, 8 + 4 * i, dtype=DTYPES[i], seed=i)
            for i in range(4)]
    specs = [ShardTable(f"t{i}", t.num_rows, t.dim, t.dtype, lookups=5.0 + 20 * (i == 0))
             for i, t in enumerate(tabs)]
    save_tables(tabs, root, [s.name for s in specs])
    return tabs, specs, root


def _batch(tabs: list[Any], seed: int, batch: int = 6) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(seed)
    lengths = [rng.integers(0, 5, batch) for _ in tabs]
    return [rng.integers(0, t.num_rows, int(n.sum())) for t, n in zip(tabs, lengths)], lengths


def _wait_dead(actor: Any, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=limit_s)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers")


@pytest.mark.parametrize("strategy", ["capacity", "cost"])
def test_ray_lookup_equals_in_process(local_ray: None, tables: Any, strategy: str) -> None:
    tabs, specs, root = tables
    p = plan(specs, 3, strategy=strategy, batch=64)
    if strategy == "cost":
        assert any(pl.split != "table" for pl in p.placements)  # a split table is exercised
    local = ShardedEmbedding(p, tabs)
    with RayShardedEmbedding(p, root, timeout_s=30) as emb:
        assert sorted(emb.actors) == sorted({q.shard for pl in p.placements for q in pl.pieces})
        for seed, mode in enumerate(("sum", "mean", "max")):
            indices, lengths = _batch(tabs, seed)
            got = emb.lookup(indices, lengths=lengths, mode=mode)
            want = recengine.EmbeddingCollection(tabs).lookup(indices, lengths=lengths, mode=mode)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(got, local.lookup(indices, lengths=lengths, mode=mode))
        bad = [i.copy() for i in indices]
        bad[1][0] = 10**6
        with pytest.raises(IndexError):  # checked by the driver, before any shard is called
            emb.lookup(bad, lengths=lengths)
        assert all(v >= 0 for v in emb.cpu_seconds().values())


def test_a_killed_shard_fails_fast_and_clearly(local_ray: None, tables: Any) -> None:
    tabs, specs, root = tables
    p = plan(specs, 2, strategy="capacity")
    indices, lengths = _batch(tabs, 7)
    with RayShardedEmbedding(p, root, timeout_s=20) as emb:
        emb.lookup(indices, lengths=lengths)
        ray.kill(emb.actors[1], no_restart=True)
        _wait_dead(emb.actors[1])  # the kill is asynchronous
        start = time.monotonic()
        with pytest.raises(ShardUnavailableError) as err:
            emb.lookup(indices, lengths=lengths)
        assert err.value.shard == 1 and time.monotonic() - start < 20


def test_a_hung_shard_times_out(local_ray: None, tables: Any) -> None:
    tabs, specs, root = tables
    p = plan(specs, 2, strategy="capacity")
    indices, lengths = _batch(tabs, 8)
    with RayShardedEmbedding(p, root, timeout_s=1.0) as emb:
        # Keep shard 0 busy past the deadline: its next call waits behind this one.
        blocker = emb.actors[0].__ray_call__.remote(lambda self: time.sleep(5))
        start = time.monotonic()
        with pytest.raises(ShardUnavailableError, match="no answer within 1 s"):
            emb.lookup(indices, lengths=lengths)
        assert time.monotonic() - start < 4
        ray.get(blocker)


def test_a_restarted_shard_reloads_its_pieces(local_ray: None, tables: Any) -> None:
    tabs, specs, root = tables
    p = plan(specs, 2, strategy="cost", batch=64)
    indices, lengths = _batch(tabs, 9)
    want = recengine.EmbeddingCollection(tabs).lookup(indices, lengths=lengths)
    with RayShardedEmbedding(p, root, timeout_s=60, max_restarts=2) as emb:
        actor = emb.actors[0]
        pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
        ray.kill(actor, no_restart=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until a new process answers
            try:
                if ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60) != pid:
                    break
            except ray.exceptions.RayActorError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError("the shard actor did not restart")
        np.testing.assert_allclose(emb.lookup(indices, lengths=lengths), want, rtol=1e-5,
                                   atol=1e-5)


def test_missing_files_are_reported(local_ray: None, tables: Any, tmp_path: Path) -> None:
    _, specs, _ = tables
    with pytest.raises(FileNotFoundError, match=r"t0\.safetensors"):
        RayShardedEmbedding(plan(specs, 2, strategy="capacity"), tmp_path)


def test_the_study_on_ray(local_ray: None) -> None:
    from recengine.shard.study import StudyConfig, run_study

    rows = run_study(StudyConfig(model="ncf", shards=2, queries=5, warmup=1, table_mb=2,
                                 strategies=("singular", "capacity")))
    assert [(r["strategy"], r["backend"]) for r in rows] == [
        ("singular", "inprocess"), ("capacity", "inprocess"), ("singular", "ray"),
        ("capacity", "ray")]
    ray_rows = [r for r in rows if r["backend"] == "ray"]
    assert all(r["p99_overhead"] > 1 and r["compute_overhead"] > 0 for r in ray_rows)


def test_table_files_of_another_shape_are_refused(local_ray: None, tables: Any,
                                                  tmp_path: Path) -> None:
    tabs, specs, _ = tables
    save_tables(tabs, tmp_path, [s.name for s in specs])
    # t1 replaced by a table with more rows and columns: its top-left block is not t1.
    save_tables([recengine.EmbeddingTable.random(400, 16)], tmp_path, ["t1"])
    with pytest.raises(ValueError, match=r"t1\.safetensors holds a 400 x 16 table but the "
                                         r"plan's is 250 x 12"):
        RayShardedEmbedding(plan(specs, 2, strategy="capacity"), tmp_path)


def test_a_shard_that_raises_is_reported_as_unavailable(local_ray: None, tables: Any) -> None:
    tabs, specs, root = tables
    indices, lengths = _batch(tabs, 10)
    emb = RayShardedEmbedding(plan(specs, 2, strategy="capacity"), root, timeout_s=20)
    with emb:
        ray.get(emb.actors[0].__ray_call__.remote(lambda self: self.tables.clear()))
        with pytest.raises(ShardUnavailableError, match="shard 0 is unavailable: it raised "
                                                        "KeyError") as err:
            emb.lookup(indices, lengths=lengths)
        assert err.value.shard == 0
    with pytest.raises(RuntimeError, match="closed"):
        emb.lookup(indices, lengths=lengths)


def test_every_lookup_is_answered_or_failed_while_shards_die_and_raise(
        local_ray: None, tables: Any) -> None:
    """Fault injection: shard actors killed (restarted by Ray) and made to raise between
    lookups; each lookup returns the right answer or raises ShardUnavailableError, none
    hangs or returns a wrong answer, and the driver leaks no file descriptor."""
    tabs, specs, root = tables
    indices, lengths = _batch(tabs, 11)
    want = recengine.EmbeddingCollection(tabs).lookup(indices, lengths=lengths)
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    served = failed = 0
    rng = np.random.default_rng(0)
    with RayShardedEmbedding(plan(specs, 2, strategy="capacity"), root, timeout_s=30,
                             max_restarts=100) as emb:
        for _ in range(12):
            fault = rng.integers(0, 3)
            victim = emb.actors[int(rng.integers(0, 2))]
            if fault == 1:
                ray.kill(victim, no_restart=False)
            elif fault == 2:
                ray.get(victim.__ray_call__.remote(
                    lambda self: setattr(self, "tables", {})), timeout=60)
            t0 = time.monotonic()
            try:
                got = emb.lookup(indices, lengths=lengths)
            except ShardUnavailableError:
                failed += 1
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
                served += 1
            assert time.monotonic() - t0 < 35
            if fault == 2:  # put the pieces back: a restart reloads them
                ray.kill(victim, no_restart=False)
    assert served + failed == 12 and served > 0
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) <= fds + 2
