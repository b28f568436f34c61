"""Shared setup of the pooling benchmarks: model tables, index sets and the expected outputs.

The benchmarks run only when asked (``pyproject.toml``'s addopts carry
``--benchmark-disable``, and ``testpaths`` leaves this folder out)::

    pytest benches --benchmark-enable
    pytest benches --benchmark-enable -k "batch-1-"
    RECENGINE_BENCH_MODELS=rmc2,mtwnd RECENGINE_BENCH_TABLE_MB=512 pytest benches --benchmark-enable

Sizes come from environment variables:

* ``RECENGINE_BENCH_MODELS``: comma list of DeepRecInfra models (default ``rmc1,wnd,din``);
* ``RECENGINE_BENCH_BATCHES``: comma list of batch sizes (default ``1,16,64,256,1024``);
* ``RECENGINE_BENCH_DTYPES``: ``fp32``, ``int8`` or both (default ``fp32``);
* ``RECENGINE_BENCH_TABLE_MB``: fp32 MiB each model's tables are scaled to (default 64, twice
  a 32 MB L3);
* ``RECENGINE_BENCH_SCALE``: a row-count factor for every model instead (1 = full size);
* ``RECENGINE_BENCH_THREADS``: threads for recengine and torch (default: all cores).
"""

from __future__ import annotations

import gc
import os
from typing import Any, Optional

import numpy as np
import pytest
from recengine import EmbeddingTable, get_num_threads, set_num_threads
from recengine.bench import (
    Stage,
    default_threads,
    index_set_count,
    make_index_sets,
    numpy_pool,
    outputs_agree,
)
from recengine.shapes import TableSpec, model_bytes, model_tables, resolve_model

try:
    import torch
except ImportError:  # the torch benchmarks skip
    torch = None

try:
    from recengine.reference import pool_reference
except ImportError:  # written alongside; fall back to the vectorised numpy pooling
    pool_reference = None


def _env_list(name: str, default: str) -> list[str]:
    return [t.strip() for t in os.environ.get(name, default).split(",") if t.strip()]


MODELS = [resolve_model(m) for m in _env_list("RECENGINE_BENCH_MODELS", "rmc1,wnd,din")]
BATCHES = [int(b) for b in _env_list("RECENGINE_BENCH_BATCHES", "1,16,64,256,1024")]
DTYPES = [d.lower() for d in _env_list("RECENGINE_BENCH_DTYPES", "fp32")]
TABLE_MB = float(os.environ.get("RECENGINE_BENCH_TABLE_MB", "64"))
SCALE: Optional[float] = (float(os.environ["RECENGINE_BENCH_SCALE"])
                          if os.environ.get("RECENGINE_BENCH_SCALE") else None)
THREADS = int(os.environ.get("RECENGINE_BENCH_THREADS", "0")) or default_threads()
IMPLS = ["recengine", "torch", "numpy"]


def model_scale(model: str) -> float:
    """The row scale the benchmarks use for ``model``."""
    if SCALE is not None:
        return SCALE
    return min(1.0, TABLE_MB * 2**20 / model_bytes(model))


class BenchEnv:
    """Builds each model's stage on first use and keeps only the current model's alive, so
    the benchmarks (ordered model by model) hold one model's tables at a time."""

    threads = THREADS
    torch = torch

    def __init__(self) -> None:
        self._model: Optional[str] = None
        self._stages: dict[str, tuple[Stage, list[TableSpec]]] = {}
        self._sets: dict[tuple[str, int], list[Any]] = {}
        self._expected: dict[tuple[str, int], np.ndarray] = {}

    def stage(self, model: str, dtype: str) -> tuple[Stage, list[TableSpec]]:
        if model != self._model:
            self._stages.clear()
            self._sets.clear()
            self._expected.clear()
            gc.collect()
            self._model = model
        if dtype not in self._stages:
            specs = model_tables(model, model_scale(model))
            tables = [EmbeddingTable.random(s.num_rows, s.dim, seed=t)
                      for t, s in enumerate(specs)]
            if dtype != "fp32":
                tables = [t.quantize(dtype) for t in tables]
            self._stages[dtype] = (Stage(tables, torch), specs)
        return self._stages[dtype]

    def index_sets(self, model: str, dtype: str, batch: int) -> list[Any]:
        """Index sets for one call each; cycling through them keeps the rows out of cache."""
        stage, specs = self.stage(model, dtype)
        key = (dtype, batch)
        if key not in self._sets:
            lookups = batch * sum(s.lookups for s in specs)
            nbytes = batch * sum(s.lookups * rb for s, rb in zip(specs, stage.row_bytes))
            count = index_set_count(nbytes, lookups, fresh_mb=64.0, most=32, index_mb=128.0)
            self._sets[key] = make_index_sets(specs, batch, count, seed=1, torch=torch)
        return self._sets[key]

    def expected(self, model: str, dtype: str, batch: int) -> np.ndarray:
        """The stage's output on the first index set, from the slow numpy reference
        (``recengine.reference.pool_reference``, on the rows the set uses) when it exists."""
        key = (dtype, batch)
        if key not in self._expected:
            stage, _ = self.stage(model, dtype)
            iset = self.index_sets(model, dtype, batch)[0]
            outs = []
            for table, idx, off in zip(stage.tables, iset.indices, iset.offsets):
                rows, local = np.unique(idx, return_inverse=True)
                # Only the rows this set reads; int8 rows dequantized here from the raw bytes.
                values = table.to_numpy()[rows] if table.dtype == "fp32" else \
                    _dequantized_rows(table, rows)
                if pool_reference is not None:
                    outs.append(pool_reference(values, local.reshape(-1), offsets=off))
                else:
                    outs.append(numpy_pool(values, local.reshape(-1), off))
            self._expected[key] = np.concatenate(outs, axis=1)
        return self._expected[key]

    def agrees(self, model: str, dtype: str, batch: int, actual: Any) -> bool:
        """Whether ``actual`` (numpy or torch) matches :meth:`expected` to fp32 rounding."""
        _, specs = self.stage(model, dtype)
        return outputs_agree(actual, self.expected(model, dtype, batch),
                             max(s.lookups for s in specs))[0]


def _dequantized_rows(table: EmbeddingTable, rows: np.ndarray) -> np.ndarray:
    """``rows`` of an int8 table as float32: codes * scale + bias from its fused raw rows."""
    raw = table.raw_rows()[rows]
    dim = table.dim
    scale_bias = np.ascontiguousarray(raw[:, dim:dim + 8]).view(np.float32)
    return raw[:, :dim].astype(np.float32) * scale_bias[:, :1] + scale_bias[:, 1:]



def pytest_generate_tests(metafunc: Any) -> None:
    """Parametrise ``pooling_case`` as (model, batch, dtype, impl), ids like
    ``rmc1-batch-16-fp32-torch`` (so ``-k "batch-1-"`` picks batch 1)."""
    if "pooling_case" in metafunc.fixturenames:
        cases = [(m, b, d, i) for m in MODELS for b in BATCHES for d in DTYPES for i in IMPLS]
        metafunc.parametrize("pooling_case", cases,
                             ids=[f"{m}-batch-{b}-{d}-{i}" for m, b, d, i in cases])


@pytest.fixture(scope="session")
def bench_env() -> Any:
    saved = get_num_threads()
    saved_torch = torch.get_num_threads() if torch is not None else None
    set_num_threads(THREADS)
    if torch is not None:
        torch.set_num_threads(THREADS)
    yield BenchEnv()
    set_num_threads(saved)
    if torch is not None:
        torch.set_num_threads(saved_torch)
