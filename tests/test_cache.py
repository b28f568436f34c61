"""The blob cache: policies against a plain-Python model, Belady's bound, pins, data,
concurrency, the hot-row table cache, and bad input."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import recengine
from hypothesis import given, settings
from hypothesis import strategies as st
from recengine.cache import POLICIES, CachedTable, ExpertCache, simulate

traces = st.lists(st.lists(st.integers(0, 11), min_size=0, max_size=4), min_size=1, max_size=40)


def _victim(policy: str, cands: list[tuple[int, dict[str, int]]], next_use: Any) -> int:
    """The slot the policy evicts among ``cands`` (slot, entry): the first slot with the
    smallest key, or the last with the largest."""
    key, biggest = {
        "inactive_lifo": (lambda e: e["loaded"], True),
        "fifo": (lambda e: e["loaded"], False),
        "lru": (lambda e: e["last"], False),
        "lfu": (lambda e: (e["uses"], e["last"]), False),
        "belady": (lambda e: (next_use(e["id"]), -e["last"]), True),
    }[policy]
    best: Optional[tuple[Any, int]] = None
    for k, e in cands:
        v = key(e)
        if best is None or (v >= best[0] if biggest else v < best[0]):
            best = (v, k)
    assert best is not None
    return best[1]


def reference(policy: str, slots: int, trace: list[list[int]]) -> dict[str, int]:
    """The policies as plain Python over explicit slots (ties as the core breaks them: the
    lowest slot among minima, the highest among maxima)."""
    table: list[Optional[dict[str, int]]] = [None] * slots
    hits = misses = clock = loads = 0
    future = [set(b) for b in trace]

    def next_use(i: int, now: int) -> float:
        return next((b for b in range(now + 1, len(trace)) if i in future[b]), float("inf"))

    for now, batch in enumerate(trace):
        clock += 1
        distinct = list(dict.fromkeys(batch))
        where = {e["id"]: k for k, e in enumerate(table) if e is not None}
        for i in distinct:
            if i in where:
                hits += 1
                e = table[where[i]]
                assert e is not None
                e["last"], e["uses"] = clock, e["uses"] + 1
        pinned = set(distinct)
        for i in distinct:
            if i in where:
                continue
            misses += 1
            empty = [k for k, e in enumerate(table) if e is None]
            if empty:
                k = empty[0]
            else:
                cands = [(k, e) for k, e in enumerate(table) if e is not None
                         and e["id"] not in pinned]
                k = _victim(policy, cands, lambda i, now=now: next_use(i, now))
                old = table[k]
                assert old is not None
                del where[old["id"]]
            loads += 1
            table[k] = {"id": i, "loaded": loads, "last": clock, "uses": 1}
            where[i] = k
    return {"hits": hits, "misses": misses}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(POLICIES), st.integers(4, 6), traces)
def test_policies_match_the_plain_python_model(policy: str, slots: int,
                                              trace: list[list[int]]) -> None:
    got = simulate(policy, slots, trace, num_ids=12)
    want = reference(policy, slots, trace)
    assert (got["hits"], got["misses"]) == (want["hits"], want["misses"])


@settings(max_examples=200, deadline=None)
@given(st.integers(4, 8), traces)
def test_belady_misses_no_more_than_any_policy(slots: int, trace: list[list[int]]) -> None:
    best = simulate("belady", slots, trace, num_ids=12)["misses"]
    for policy in POLICIES:
        assert best <= simulate(policy, slots, trace, num_ids=12)["misses"], policy


ops = st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 9), min_size=1, max_size=3)),
               min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(POLICIES[:4]), ops)
def test_pinned_blobs_stay_and_hold_their_data(policy: str, script: list[Any]) -> None:
    blobs = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    cache = ExpertCache.from_array(blobs, slots=6, policy=policy, wait_s=0.0)
    held: list[np.ndarray] = []  # batches fetched and not yet released
    for release_first, ids in script:
        if release_first and held:
            cache.release(held.pop(0))
        try:
            slots = cache.fetch(ids)
        except ValueError:
            # Only when the pinned batches leave too few slots.
            pinned = {i for b in held for i in b.tolist()}
            assert len(pinned | set(ids)) > 6 or len(pinned) + len(set(ids) - pinned) > 6
            continue
        held.append(np.array(ids))
        view = cache.view()
        contents = cache.contents()
        for b in held:  # every pinned id is still resident, with its data
            for i in b.tolist():
                assert i in contents
                np.testing.assert_array_equal(view[contents.index(i)], blobs[i])
        for i, k in zip(ids, slots):
            np.testing.assert_array_equal(view[k], blobs[i])
        pins = cache.pins()
        for i in {i for b in held for i in b.tolist()}:
            assert pins[contents.index(i)] == sum(i in b.tolist() for b in held)


def test_concurrent_batches_share_the_slots() -> None:
    rng = np.random.default_rng(1)
    blobs = rng.random((64, 256)).astype(np.float32)
    cache = ExpertCache.from_array(blobs, slots=8, policy="lru", wait_s=20.0)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            for _ in range(200):
                ids = r.choice(64, size=int(r.integers(1, 4)), replace=False)
                with cache.batch(ids) as slots:
                    view = cache.view()
                    for i, k in zip(ids, slots):
                        if not np.array_equal(view[k], blobs[i]):
                            raise AssertionError(f"slot {k} does not hold blob {i}")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a batch hung"
    assert not errors, errors[0]
    s = cache.stats()
    assert s["batches"] == 800 and not any(cache.pins())
    assert s["bytes_copied"] == s["misses"] * 256 * 4


def test_belady_needs_the_future_and_uses_it() -> None:
    blobs = np.arange(5, dtype=np.float64)[:, None]
    trace = [[0], [1], [2], [0], [1]]
    with pytest.raises(ValueError, match="future"):
        ExpertCache.from_array(blobs, 2, "belady").fetch([0])
    cache = ExpertCache.from_array(blobs, 2, "belady")
    cache.set_future(trace)
    for b in trace:
        with cache.batch(b):
            pass
    assert cache.stats()["misses"] == simulate("belady", 2, trace)["misses"] == 4


def test_experts_on_disk(tmp_path: Path) -> None:
    experts = np.random.default_rng(2).random((12, 5, 7)).astype(np.float32)
    np.save(tmp_path / "experts.npy", experts)
    cache = ExpertCache.from_npy(tmp_path / "experts.npy", slots=3)
    assert (cache.num_blobs, cache.blob_bytes) == (12, 5 * 7 * 4)
    with cache.batch([11, 0]) as slots:
        np.testing.assert_array_equal(cache.view()[slots[0]], experts[11])
        np.testing.assert_array_equal(cache.view()[slots[1]], experts[0])
    with pytest.raises(ValueError, match="truncated"):
        ExpertCache.from_file(tmp_path / "experts.npy", 1000, (5, 7), np.float32, 3)
    with pytest.raises(OSError):
        ExpertCache.from_file(tmp_path / "missing.npy", 1, (5, 7), np.float32, 3)


def test_bad_input() -> None:
    blobs = np.zeros((6, 2), np.float32)
    with pytest.raises(ValueError, match="slots must be in \\[1, "):
        ExpertCache.from_array(blobs, 0)
    with pytest.raises(ValueError, match="unknown policy"):
        ExpertCache.from_array(blobs, 2, "random")
    cache = ExpertCache.from_array(blobs, 2, wait_s=0.0)
    with pytest.raises(IndexError):
        cache.fetch([6])
    with pytest.raises(IndexError):
        cache.fetch([-1])
    with pytest.raises(ValueError, match="rounds"):
        cache.fetch([0, 1, 2])
    with pytest.raises(TypeError):
        cache.fetch([0.5])
    with pytest.raises(ValueError, match="not in the cache"):
        cache.release([3])
    with cache.batch([0, 1]):
        with pytest.raises(ValueError, match="pinned by other batches"):
            cache.fetch([2])  # both slots pinned, no wait allowed
    with pytest.raises(ValueError, match="not pinned"):
        cache.release([0])
    assert [r.tolist() for r in cache.rounds([4, 1, 4, 2, 3])] == [[4, 1], [2, 3]]
    with pytest.raises(ValueError, match="at least one byte"):
        recengine._core.BlobCache.from_file(__file__, 3, 0, 2)  # zero-byte blobs
    with pytest.raises(TypeError, match="uint8"):
        recengine._core.BlobCache.from_array(blobs, 2)  # the core takes raw bytes
    with pytest.raises(ValueError):
        cache.view()[0, 0] = 1.0  # read-only


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(("fp32", "fp16", "int8", "int4")), st.sampled_from(("sum", "mean", "max")),
       st.integers(4, 12), st.lists(st.integers(0, 4), min_size=0, max_size=12),
       st.integers(0, 2**31 - 1))
def test_cached_table_equals_the_table(dtype: str, mode: str, slots: int, lengths: list[int],
                                       seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = recengine.EmbeddingTable.random(50, 6, dtype=dtype, seed=3)
    lens = np.array(lengths, dtype=np.int64)
    idx = rng.integers(0, 50, int(lens.sum()))
    cached = CachedTable(table, slots=slots)
    got = cached.lookup(idx, lengths=lens, mode=mode)
    np.testing.assert_array_equal(got, table.lookup(idx, lengths=lens, mode=mode))
    assert not any(cached.cache.pins())


def test_cached_table_counts_hits_and_refuses_wide_bags() -> None:
    table = recengine.EmbeddingTable.random(100, 4)
    cached = CachedTable(table, slots=8)
    hot = np.array([1, 2, 3, 1, 2, 3])
    cached.lookup(hot, lengths=np.array([3, 3]))
    cached.lookup(hot, lengths=np.array([3, 3]))
    s = cached.stats()
    assert s["misses"] == 3 and s["hits"] == 3 and s["hit_rate"] == 0.5
    with pytest.raises(ValueError, match="distinct rows"):
        cached.lookup(np.arange(9), lengths=np.array([9]))
    with pytest.raises(IndexError):
        cached.lookup(np.array([100]), lengths=np.array([1]))
