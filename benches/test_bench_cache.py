"""The expert cache's costs: bookkeeping per batch, and the copy bandwidth of misses next to a
plain ``memcpy`` of the same bytes (numpy ``copyto``) in one run.

    pytest benches/test_bench_cache.py --benchmark-enable

Sizes: ``RECENGINE_BENCH_EXPERT_MB`` (MiB per expert, default 2) and
``RECENGINE_BENCH_EXPERTS`` (default 64).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from recengine.cache import ExpertCache

EXPERT_MB = float(os.environ.get("RECENGINE_BENCH_EXPERT_MB", "2"))
EXPERTS = int(os.environ.get("RECENGINE_BENCH_EXPERTS", "64"))
SLOTS = 8


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    floats = int(EXPERT_MB * 2**20 / 4)
    return np.random.default_rng(0).random((EXPERTS, floats), dtype=np.float32)


@pytest.mark.benchmark(group="cache-bookkeeping")
@pytest.mark.parametrize("active", [1, 4, 8])
def test_bookkeeping_per_batch(benchmark: object, blobs: np.ndarray, active: int) -> None:
    """fetch + release of a batch whose experts are all resident (no copy)."""
    cache = ExpertCache.from_array(blobs[:, :16], slots=SLOTS, policy="inactive_lifo")
    ids = np.arange(active)
    cache.fetch(ids)
    cache.release(ids)

    def batch() -> None:
        cache.fetch(ids)
        cache.release(ids)

    benchmark(batch)  # type: ignore[operator]
    assert cache.stats()["misses"] == active


@pytest.mark.benchmark(group="cache-copy")
def test_copy_misses(benchmark: object, blobs: np.ndarray) -> None:
    """SLOTS misses per call (the cache cycles through all experts), copied by the core."""
    cache = ExpertCache.from_array(blobs, slots=SLOTS, policy="fifo")
    state = {"next": 0}

    def batch() -> None:
        ids = (np.arange(SLOTS) + state["next"]) % EXPERTS
        state["next"] += SLOTS
        cache.fetch(ids)
        cache.release(ids)

    benchmark(batch)  # type: ignore[operator]
    s = cache.stats()
    assert s["hits"] == 0 or EXPERTS <= SLOTS
    benchmark.extra_info["GB/s"] = s["bytes_copied"] / s["copy_seconds"] / 1e9  # type: ignore[attr-defined]


@pytest.mark.benchmark(group="cache-copy")
def test_memcpy_same_bytes(benchmark: object, blobs: np.ndarray) -> None:
    """numpy copyto of the same SLOTS blobs into a slot-sized buffer: the plain memcpy."""
    arena = np.empty((SLOTS, blobs.shape[1]), dtype=np.float32)
    state = {"next": 0}

    def batch() -> None:
        ids = (np.arange(SLOTS) + state["next"]) % EXPERTS
        state["next"] += SLOTS
        for k, i in enumerate(ids):
            np.copyto(arena[k], blobs[i])

    benchmark(batch)  # type: ignore[operator]
