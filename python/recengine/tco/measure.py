"""The per-core rates the TCO study provisions from, measured on this machine.

For each DeepRecInfra model, :func:`measure_model` measures, one core at a time:

* the **dense part**'s time per query (``dense_s``): the model's :meth:`dense_part` on a batch
  of the mean query size, torch on one thread;
* the **lookup rate** (``lookup_rate``, rows/s a core pools): the core's pooling kernel on one
  thread over a table of ``kernel_mb`` MiB at the model's widest dim (out of the caches, as a
  datacenter model's tables are), Zipf(1) rows as the NMP emulator draws them;
* **RecNMP's speedup** (``nmp_speedup``): the NMP emulator's fast timing mode, the DDR4 host's
  SLS memory time over RecNMP's for a batch of 64 of the model's lookups
  (:func:`recengine.nmp.profile_sls`);
* the **bytes a query moves** between a compute and its memory nodes (``bytes_per_query``):
  its ids and a bag offset per item and feature out (int32), its pooled rows (sequences row
  by row, fp32) back, as the
  deployment's :class:`~recengine.disagg.placement.MemoryPlan` sends them.

:meth:`Measured.capacity` turns them into a :class:`~.provision.Capacity`: a monolithic core
serves a query in ``lookups / lookup_rate + dense_s``, a compute-node core in ``dense_s +
rpc_s`` (the RPC cost per query, which the study measures on its Ray deployment), a
memory-node core pools ``lookup_rate`` rows/s (times ``nmp_speedup`` on NMP nodes).
:meth:`Measured.demand` makes the model's :class:`~.provision.Demand` at datacenter scale.

Example::

    >>> m = Measured("rmc1", items=165, lookups_per_query=105_600, dense_s=1e-3,
    ...              lookup_rate=2e7, nmp_speedup=6.0, bytes_per_query=6e5, table_gb=4.1)
    >>> c = m.capacity(rpc_s=2e-3)
    >>> round(1 / c.monolithic_qps_per_core, 5), round(1 / c.compute_qps_per_core, 5)
    (0.00628, 0.003)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..shapes import model_bytes, resolve_model
from .provision import Capacity, Demand

__all__ = ["Measured", "lookup_rate", "measure_model"]


@dataclass(frozen=True)
class Measured:
    """One model's measured rates (see the module).

    Args:
        model: its name.
        items: items per query (the mean query size).
        lookups_per_query: rows a query pools (items x ids per item).
        dense_s: seconds of one core per query in the dense part.
        lookup_rate: rows/s one core pools.
        nmp_speedup: RecNMP's SLS memory time over the host's, inverted.
        bytes_per_query: bytes between a compute node and its memory nodes per query.
        query_bytes: bytes of the query's ids (int32), which any architecture receives.
        table_gb: the model's fp32 tables at DeepRecInfra's full scale, GB.
    """

    model: str
    items: float
    lookups_per_query: float
    dense_s: float
    lookup_rate: float
    nmp_speedup: float
    bytes_per_query: float
    table_gb: float
    query_bytes: float = 0.0

    def capacity(self, rpc_s: float) -> Capacity:
        """Per-core rates with ``rpc_s`` seconds of a compute-node core per query for its
        RPCs."""
        if not rpc_s >= 0:
            raise ValueError(f"rpc_s must be >= 0, got {rpc_s}")
        sparse_s = self.lookups_per_query / self.lookup_rate
        return Capacity(monolithic_qps_per_core=1 / (sparse_s + self.dense_s),
                        compute_qps_per_core=1 / (self.dense_s + rpc_s),
                        lookups_per_core_s=self.lookup_rate,
                        sparse_share=sparse_s / (sparse_s + self.dense_s),
                        nmp_speedup=self.nmp_speedup)

    def demand(self, qps: float, table_multiplier: float) -> Demand:
        """The model served at ``qps`` with its tables ``table_multiplier`` times
        DeepRecInfra's full scale."""
        if not table_multiplier > 0:
            raise ValueError(f"table_multiplier must be positive, got {table_multiplier}")
        return Demand(self.model, qps, self.table_gb * table_multiplier,
                      self.lookups_per_query, 1.0, self.bytes_per_query, self.query_bytes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lookup_rate(dim: int, kernel_mb: float = 256.0, pooling: int = 80, bags: int = 256,
                repeats: int = 20, seed: int = 0) -> float:
    """Rows/s one core pools (the core's kernel on one thread, fp32, sum pooling) from a
    ``kernel_mb`` MiB table of width ``dim``: ``repeats`` batches of ``bags`` bags of
    ``pooling`` Zipf(1) rows after two that warm, the best batch's rate (the best, as other
    processes may share the core)."""
    import recengine as rc

    from ..rows import draw_rows

    if dim < 1 or not kernel_mb > 0 or min(pooling, bags, repeats) < 1:
        raise ValueError("dim, kernel_mb, pooling, bags and repeats must be positive")
    rows = max(int(kernel_mb * 2**20 / (4 * dim)), 1024)
    table = rc.EmbeddingTable(np.ones((rows, dim), dtype=np.float32))
    rng = np.random.default_rng(seed)
    # Zipf ranks scattered over the table, as hot rows are in a real one
    scatter = rng.permutation(rows)
    offsets = np.arange(0, bags * pooling + 1, pooling, dtype=np.int64)
    batches = [scatter[draw_rows(rng, rows, bags * pooling, "zipf", 1.0)]
               for _ in range(repeats + 2)]
    before = rc.get_num_threads()
    rc.set_num_threads(1)
    try:
        best = float("inf")
        for i, ids in enumerate(batches):
            t0 = time.perf_counter()
            table.lookup(ids, offsets, include_last_offset=True)
            if i > 1:  # the first two warm
                best = min(best, time.perf_counter() - t0)
    finally:
        rc.set_num_threads(before)
    return bags * pooling / best


def _dense_s(model: Any, items: int, repeats: int, seed: int) -> float:
    import torch

    batch = model.sample_batch(items, seed=seed)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            embedded = model.embed(batch)
            best = float("inf")
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                model.dense_part(embedded, batch.dense)
                if i:
                    best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return best


def measure_model(model: str, items: float, scale: float = 0.01, kernel_mb: float = 256.0,
                  repeats: int = 5, seed: int = 0,
                  rates: Optional[dict[int, float]] = None,
                  status: Callable[[str], None] = lambda m: None) -> Measured:
    """Measure ``model`` (see the module) for queries of ``items`` items; its dense part is
    built at ``scale`` (tables do not change it). ``rates`` caches the lookup rate by dim
    across models."""
    from ..models import build
    from ..nmp import profile_sls

    key = resolve_model(model)
    if not items >= 1:
        raise ValueError(f"a query needs at least one item, got {items}")
    m = build(key, scale=scale, seed=seed)
    n = max(round(items), 1)
    dim = max(t.dim for t in m.tables)
    rates = {} if rates is None else rates
    if dim not in rates:
        status(f"{key}: the core's lookup rate at dim {dim} ({kernel_mb:g} MiB table)")
        rates[dim] = lookup_rate(dim, kernel_mb, seed=seed)
    status(f"{key}: dense part of a {n}-item query, RecNMP's speedup")
    ids_per_item = sum(f.length for f in m.features)
    rows_back = sum((f.length if f.sequence else 1) * m.tables[f.table].dim
                    for f in m.features)
    return Measured(
        model=key, items=float(items), lookups_per_query=float(items * ids_per_item),
        dense_s=_dense_s(m, n, repeats, seed), lookup_rate=rates[dim],
        nmp_speedup=float(profile_sls(key, batches=(64,), seed=seed).speedup[0]),
        bytes_per_query=float(items * 4 * (ids_per_item + len(m.features) + rows_back)),
        table_gb=model_bytes(key) / 1e9, query_bytes=float(items * 4 * ids_per_item))
