"""Repeated calls do not leak memory: RSS after many calls stays within a small bound of RSS
after a warm-up (inputs are fresh arrays each call, so a leaked reference would show too)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import recengine
from recengine import EmbeddingCollection, EmbeddingTable

psutil = pytest.importorskip("psutil")

MiB = 1 << 20


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def growth(call: Callable[[int], object], n: int, warmup: int = 200) -> int:
    for k in range(warmup):
        call(k)
    before = rss()
    for k in range(n):
        call(k)
    return rss() - before


def test_lookup_does_not_leak() -> None:
    table = EmbeddingTable.random(5000, 64, dtype="int8", seed=0)
    r = np.random.default_rng(0)
    pool_idx = r.integers(0, 5000, 1 << 16)

    def call(k: int) -> object:
        # fresh 80 KB index array and 16 KB result per call: 3000 calls leak ~300 MB if either
        # is never freed
        idx = pool_idx[(k * 97) % 1000:][:10240].copy()
        w = np.ones(idx.size, np.float32)
        out = table.lookup(idx, offsets=np.arange(0, 10240, 160), weights=w)
        assert out.shape == (64, 64)
        return out

    assert growth(call, 3000) < 12 * MiB


def test_conversion_and_error_paths_do_not_leak() -> None:
    table = EmbeddingTable.random(100, 16, seed=1)

    def call(k: int) -> None:
        # lists and non-contiguous arrays go through the Python conversion path
        table.lookup(list(range(k % 50, k % 50 + 40)), lengths=[20, 20])
        table.lookup(np.arange(0, 4000, dtype=np.int64)[::100] % 100, lengths=[40])
        with pytest.raises(IndexError):
            table.lookup(np.arange(10000, dtype=np.int64), lengths=[10000])
        with pytest.raises(ValueError):
            table.lookup(np.arange(10000, dtype=np.int64) % 100, lengths=[3])
        with pytest.raises(TypeError):
            table.lookup(np.arange(2000, dtype=np.float64), lengths=[2000])

    assert growth(call, 3000) < 12 * MiB


def test_functional_and_collection_do_not_leak() -> None:
    arr = np.random.default_rng(2).standard_normal((2000, 32)).astype(np.float32)
    coll = EmbeddingCollection([EmbeddingTable(arr), EmbeddingTable(arr, dtype="int4")])

    def call(k: int) -> None:
        idx = (np.arange(8000) * (k + 1)) % 2000
        recengine.sparse_lengths_sum(arr, idx, np.full(100, 80))
        recengine.embedding_bag(arr.astype(np.float16) if k % 100 == 0 else arr, idx,
                                np.arange(0, 8000, 80))
        coll.lookup(idx, lengths=np.full((2, 50), 80))

    assert growth(call, 3000) < 12 * MiB


def test_tables_are_freed(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((4096, 64)).astype(np.float32)  # 1 MiB
    np.save(tmp_path / "t.npy", x)
    EmbeddingTable(x).save(tmp_path / "t.safetensors")

    def call(k: int) -> None:
        t = EmbeddingTable(x, dtype=("fp32", "fp16", "int8")[k % 3])
        t.to_numpy()
        t.raw_rows()
        t.quantize("int4")
        EmbeddingTable.random(4096, 64, seed=k)
        m = EmbeddingTable.load(tmp_path / ("t.npy" if k % 2 else "t.safetensors"))
        m.lookup(np.arange(4096), lengths=[4096])

    # every iteration makes ~4 MiB of tables: 300 leaked iterations would be 1.2 GiB
    assert growth(call, 300, warmup=30) < 24 * MiB
