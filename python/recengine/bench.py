"""Side-by-side benchmark of embedding pooling: recengine vs torch vs numpy, in one run.

For every (model, dtype, batch) the harness builds the model's tables once (DeepRecInfra shapes from
:mod:`recengine.shapes`, row counts scaled), draws uniform random indices with each table's
fixed pooling factor, and times the model's whole embedding stage on the same rows, the same
indices and the same thread count, as up to three operations (:data:`OPS`, one result row each,
``row["op"]``). The ``"pool"`` op times the stage three ways:

* **recengine**: one :meth:`recengine.EmbeddingCollection.lookup` call over all tables.
* **torch** (eval, ``torch.no_grad()``): the DLRM-style stage, one ``nn.EmbeddingBag(mode="sum")``
  per table called with 1-D indices and offsets, then ``torch.cat(dim=1)``; for int8, torch's
  fused 8-bit rowwise op ``quantized.embedding_bag_byte_rowwise_offsets`` per table on the same
  bytes recengine stores.
* **numpy**: :data:`NUMPY_METHOD`, one table at a time; numpy's gathers run on one thread
  whatever the thread count. int8 rows are dequantized from the same fused rows.

The ``"forward"`` and ``"forward_backward"`` ops (fp32 tables only, they need torch) time the
stage as torch modules (:class:`ModuleStage`), all three routes on the same weight Parameters:

* **recengine**: one :class:`recengine.nn.EmbeddingBagCollection` call on a prebuilt
  ``KeyedJaggedTensor`` (its ``embedding_bags`` are torch's modules themselves);
* **torch**: one ``nn.EmbeddingBag(mode="sum")`` per table + ``torch.cat(dim=1)``, as above;
* **modules** (extra columns): the drop-in route, each module :func:`recengine.nn.convert`-ed,
  + ``torch.cat``.

``"forward"`` runs in eval mode under ``torch.no_grad()``. ``"forward_backward"`` is one
training step without the optimizer (DLRM-style): forward in train mode with weights that
require grad (``sparse=True`` unless ``grad="dense"``), ``out.backward(g)`` with a fixed random
``g``, then every weight's ``.grad`` set to None, all inside the timed call. Each op's outputs
(and, for the training step, every table's weight gradient) are checked against torch's once
per case, outside the timing.

Each implementation's time is the median of up to ``repeats`` calls after ``warmup`` calls.
By default (``timing="alternate"``) the implementations take turns call by call, as one process
serving both would run them: torch's OpenMP threads are still spinning from torch's call when
recengine's starts, and the other way round, so the figures include what sharing the cores
costs each side. ``timing="blocks"`` instead times each implementation alone in ``rounds``
blocks (so that a slow spell of the machine falls on all of them), the last-level cache flushed
before each block; both stop early once ``budget_s`` is spent. The calls cycle through several
index sets when one call touches few bytes, so that every implementation reads rows from
memory rather than from the cache the previous one warmed. The roofline is a plain
multithreaded gather of the same rows in the core (``_core.gather_probe``), best of one cold
pass per round: ``probe_fraction`` is probe time / recengine time, 1.0 meaning recengine pools
as fast as the machine reads those rows (it can pass 1.0 where rows come from the cache).

Scaled tables keep the paper's pooling factors, so at large batches one call reads each row of
a small table several times (rmc2 at the default 256 MiB: 32 tables of 33K rows, 123K lookups
per table at batch 1024): those rows then come partly from the cache. ``scale=1`` gives the
paper's sizes.

Example::

    >>> from recengine.bench import BenchConfig, run_bench, summarize
    >>> rows = run_bench(BenchConfig(models=("ncf",), batches=(16,), dtypes=("fp32",),
    ...                              table_mb=8, repeats=3))
    >>> rows[0]["correct"], summarize(rows)["all_correct"]
    (True, True)
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from . import _core, get_num_threads, set_num_threads
from .collection import EmbeddingCollection
from .shapes import TableSpec, model_bytes, model_names, model_tables, resolve_model
from .table import EmbeddingTable

__all__ = [
    "BENCH_DTYPES",
    "DEFAULT_BATCHES",
    "DEFAULT_DTYPES",
    "DEFAULT_TABLE_MB",
    "GRAD_KINDS",
    "IMPLEMENTATIONS",
    "MODULE_OPS",
    "MODULE_ROUTES",
    "NUMPY_METHOD",
    "OPS",
    "OP_TARGETS",
    "TIMINGS",
    "BenchConfig",
    "IndexSet",
    "ModuleStage",
    "Stage",
    "aligned",
    "auto_scale",
    "bench_case",
    "bench_module_case",
    "case_name",
    "config_dict",
    "default_threads",
    "grads_agree",
    "index_set_count",
    "iter_bench",
    "make_index_sets",
    "numpy_pool",
    "outputs_agree",
    "planned_rows",
    "run_bench",
    "summarize",
    "torch_available",
]

DEFAULT_BATCHES: tuple[int, ...] = (1, 16, 64, 256, 1024)
DEFAULT_DTYPES: tuple[str, ...] = ("fp32", "int8")
#: dtypes the harness can compare against torch.
BENCH_DTYPES: tuple[str, ...] = ("fp32", "int8")
IMPLEMENTATIONS: tuple[str, ...] = ("recengine", "torch", "numpy")
#: What one result row measures: the stage's pooling (recengine's core API vs torch vs numpy),
#: its eval forward as torch modules, or its training step (forward + backward) as modules.
OPS: tuple[str, ...] = ("pool", "forward", "forward_backward")
#: How implementations are timed: call by call in turn (``"alternate"``, the default) or
#: each alone in blocks of calls (``"blocks"``).
TIMINGS: tuple[str, ...] = ("alternate", "blocks")
#: The ops that run the stage as torch modules (fp32 tables only; they need torch).
MODULE_OPS: tuple[str, ...] = ("forward", "forward_backward")
#: The routes a module op times, in the order each round runs them (see :class:`ModuleStage`).
MODULE_ROUTES: tuple[str, ...] = ("recengine", "torch", "modules")
#: Weight gradients of the ``forward_backward`` op.
GRAD_KINDS: tuple[str, ...] = ("sparse", "dense")
#: The speed ratios vs torch the project tracks, per op (fp32): (group, least ratio), groups as
#: in :func:`summarize` ("small_batch": batch <= 16, "large_batch": batch >= 64, "all").
OP_TARGETS: dict[str, tuple[tuple[str, float], ...]] = {
    "forward": (("large_batch", 1.5), ("small_batch", 3.0)),
    "forward_backward": (("all", 1.2),),
}
#: fp32 bytes a model's tables are scaled to by default: well above a 32 MB L3, small enough
#: that the eight models build and run in a few minutes on a laptop.
DEFAULT_TABLE_MB: float = 256.0
#: What the numpy column runs: of the plain-numpy poolings tried on fixed-size bags (fancy
#: index + ``np.add.reduceat``; ``np.take`` + ``reduceat``; fancy index + reshape + ``sum``;
#: ``np.take`` of the ``[B, n]`` index block + ``sum``/``einsum``/``matmul``), these were the
#: fastest over batch sizes 1-1024 and bags of 1-120.
NUMPY_METHOD = ("np.take of the [B, n] index block, then np.einsum('bnd->bd') over each bag; "
                "int8: np.take of the fused rows, then a [B,1,n] scales @ [B,n,D] codes "
                "matmul plus the summed biases")

# Outputs agree when |a - b| <= _ATOL_PER_LOOKUP * n + _RTOL * |b| for bags of n lookups:
# fp32 sums of n terms of magnitude ~1 in different orders (and int8's scale and bias folded
# in different ways) differ by up to ~n * 1e-6.
_RTOL = 1e-4
_ATOL_PER_LOOKUP = 1e-5


# --------------------------------------------------------------------------------------------
# configuration


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_scale(model: str, table_mb: float = DEFAULT_TABLE_MB, min_rows: int = 1024) -> float:
    """Row scale that makes ``model``'s fp32 tables total about ``table_mb`` MiB (never above
    the full size: scale <= 1).

    Example::

        >>> round(auto_scale("rmc1", 256), 4)
        0.0655
    """
    if not table_mb > 0:
        raise ValueError(f"table_mb must be positive, got {table_mb!r}")
    return min(1.0, table_mb * 2**20 / model_bytes(model, 1.0, min_rows))


@dataclass
class BenchConfig:
    """What :func:`run_bench` measures.

    Args:
        models: DeepRecInfra model names (see :func:`recengine.shapes.model_names`).
        batches: bags per table per call (the batch size B).
        dtypes: table storage dtypes, from :data:`BENCH_DTYPES`.
        scale: row-count factor for every model; None scales each model to ``table_mb``.
        table_mb: fp32 MiB per model when ``scale`` is None.
        min_rows: floor on a scaled table's row count.
        threads: threads for recengine and torch alike; None means all cores.
        repeats: most timed calls per implementation and case (the median is reported).
        budget_s: seconds of calls per implementation and case, after which it stops early
            (at least one timed call per round).
        warmup: untimed calls before the first round (the first one's output is checked).
        rounds: with ``timing="blocks"``, the implementations are timed in turn this many
            times, each round getting ``repeats / rounds`` calls and ``budget_s / rounds``
            seconds, the cache flushed before each block; the median is over all rounds' calls.
        timing: one of :data:`TIMINGS`: ``"alternate"`` (call by call in turn, each call of
            each implementation timed between the others') or ``"blocks"``.
        seed: seed of the tables and the indices.
        impls: implementations to time, from :data:`IMPLEMENTATIONS` (the module ops time
            recengine and the drop-in modules, and torch when it is listed; numpy does not
            apply to them).
        ops: what to measure, from :data:`OPS`; the module ops run for fp32 tables only.
        grad: the ``forward_backward`` op's weight gradients, "sparse" or "dense".
        probe: whether to measure the gather roofline.
        per_table: also time each table alone (recengine vs torch), in ``row["tables"]``.
        evict_mb: bytes written before each measurement to flush the caches (0: don't).
        fresh_mb: one measurement cycles through enough index sets to touch this many
            MiB of rows, so that calls miss the cache (capped at ``repeats + warmup`` sets).
    """

    models: Sequence[str] = field(default_factory=model_names)
    batches: Sequence[int] = DEFAULT_BATCHES
    dtypes: Sequence[str] = DEFAULT_DTYPES
    scale: Optional[float] = None
    table_mb: float = DEFAULT_TABLE_MB
    min_rows: int = 1024
    threads: Optional[int] = None
    repeats: int = 20
    budget_s: float = 0.3
    warmup: int = 1
    rounds: int = 3
    seed: int = 0
    impls: Sequence[str] = IMPLEMENTATIONS
    ops: Sequence[str] = OPS
    grad: str = "sparse"
    probe: bool = True
    per_table: bool = False
    evict_mb: float = 64.0
    fresh_mb: float = 64.0
    timing: str = "alternate"

    def __post_init__(self) -> None:
        self.models = tuple(resolve_model(m) for m in self.models)
        self.batches = tuple(int(b) for b in self.batches)
        self.dtypes = tuple(str(d).lower() for d in self.dtypes)
        self.impls = tuple(str(i).lower() for i in self.impls)
        self.ops = tuple(dict.fromkeys(str(o).lower() for o in self.ops))
        self.grad = str(self.grad).lower()
        if not self.models:
            raise ValueError("no models to benchmark")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {self.batches}")
        bad = [d for d in self.dtypes if d not in BENCH_DTYPES]
        if bad or not self.dtypes:
            raise ValueError(f"unsupported benchmark dtype(s) {bad}; expected some of "
                             f"{', '.join(BENCH_DTYPES)}")
        bad = [i for i in self.impls if i not in IMPLEMENTATIONS]
        if bad or "recengine" not in self.impls:
            raise ValueError(f"impls must include 'recengine' and come from "
                             f"{', '.join(IMPLEMENTATIONS)}; got {list(self.impls)}")
        bad = [o for o in self.ops if o not in OPS]
        if bad or not self.ops:
            raise ValueError(f"unsupported op(s) {bad}; expected some of {', '.join(OPS)}")
        if "pool" not in self.ops and "fp32" not in self.dtypes:
            raise ValueError(f"the ops {', '.join(self.ops)} run on fp32 tables only; "
                             f"dtypes {list(self.dtypes)} leave nothing to measure")
        if self.grad not in GRAD_KINDS:
            raise ValueError(f"grad must be one of {', '.join(GRAD_KINDS)}, got {self.grad!r}")
        if self.timing not in TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {self.timing!r}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads!r}")
        if self.repeats < 1 or self.warmup < 0 or self.rounds < 1 or not self.budget_s > 0:
            raise ValueError("repeats and rounds must be >= 1, warmup >= 0 and budget_s > 0")

    def model_scale(self, model: str) -> float:
        """The row scale used for ``model``."""
        if self.scale is not None:
            return float(self.scale)
        return auto_scale(model, self.table_mb, self.min_rows)

    def case_ops(self, dtype: str) -> tuple[str, ...]:
        """The ops measured on ``dtype`` tables (module ops on fp32 only), in :data:`OPS`
        order."""
        return tuple(o for o in OPS if o in self.ops and (o == "pool" or dtype == "fp32"))


# --------------------------------------------------------------------------------------------
# optional torch


_TORCH: Any = None
_TORCH_CHECKED = False


def torch_available() -> bool:
    """Whether torch imports; the first failure warns once (RuntimeWarning)."""
    return _torch() is not None


def _torch() -> Any:
    global _TORCH, _TORCH_CHECKED
    if not _TORCH_CHECKED:
        _TORCH_CHECKED = True
        try:
            import torch
        except ImportError as exc:
            warnings.warn(f"torch is not installed ({exc}); the torch columns will be None",
                          RuntimeWarning, stacklevel=3)
        else:
            _TORCH = torch
    return _TORCH


class _Threads:
    """Set recengine's and torch's thread counts for a ``with`` block, then restore them."""

    def __init__(self, n: int, torch: Any) -> None:
        self.n, self.torch = n, torch

    def __enter__(self) -> _Threads:
        self.saved = (get_num_threads(),
                      self.torch.get_num_threads() if self.torch is not None else None)
        set_num_threads(self.n)
        if self.torch is not None:
            self.torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        set_num_threads(self.saved[0])
        if self.torch is not None:
            self.torch.set_num_threads(self.saved[1])


# --------------------------------------------------------------------------------------------
# workloads


@dataclass
class IndexSet:
    """One call's inputs: per table, ``batch * lookups`` int64 row ids and ``batch`` offsets
    (fixed pooling: bag b of table t is ``indices[t][b*n_t:(b+1)*n_t]``).

    ``values``, where given, holds every table's ids one table after the other (the key-major
    values of a KeyedJaggedTensor) and ``indices[t]`` are views into it.
    """

    indices: list[np.ndarray]
    offsets: list[np.ndarray]
    batch: int
    torch_indices: Optional[list[Any]] = None
    torch_offsets: Optional[list[Any]] = None
    values: Optional[np.ndarray] = None

    @property
    def lookups(self) -> int:
        return sum(int(i.size) for i in self.indices)


def make_index_sets(
    specs: Sequence[TableSpec], batch: int, count: int = 1, seed: int = 0, torch: Any = None
) -> list[IndexSet]:
    """``count`` independent draws of uniform random indices for ``batch`` bags per table.

    With ``torch`` given, each set also carries zero-copy torch views of its arrays. Each set's
    indices lie one table after the other in one buffer (``IndexSet.values``).
    """
    rng = np.random.default_rng([seed, batch])
    offsets = [np.arange(0, batch * s.lookups, s.lookups, dtype=np.int64) for s in specs]
    bounds = np.cumsum([0] + [batch * s.lookups for s in specs]).tolist()
    out = []
    for _ in range(count):
        values = np.empty(bounds[-1], dtype=np.int64)
        idx = []
        for t, s in enumerate(specs):
            part = values[bounds[t]:bounds[t + 1]]
            part[:] = rng.integers(0, s.num_rows, size=part.size, dtype=np.int64)
            idx.append(part)
        iset = IndexSet(idx, offsets, batch, values=values)
        if torch is not None:
            iset.torch_indices = [torch.from_numpy(i) for i in idx]
            iset.torch_offsets = [torch.from_numpy(o) for o in offsets]
        out.append(iset)
    return out


def index_set_count(bytes_per_call: int, lookups_per_call: int, fresh_mb: float = 64.0,
                    most: int = 21, index_mb: float = 256.0) -> int:
    """How many distinct index sets one measurement should cycle through so that its calls
    together touch ``fresh_mb`` MiB of rows (more than the cache holds), at most ``most`` sets
    and ``index_mb`` MiB of int64 indices.

    Example::

        >>> index_set_count(bytes_per_call=80 * 128, lookups_per_call=80)
        21
        >>> index_set_count(bytes_per_call=2**30, lookups_per_call=2**23)
        1
    """
    fresh = math.ceil(fresh_mb * 2**20 / max(bytes_per_call, 1))
    by_memory = int(index_mb * 2**20) // (8 * max(lookups_per_call, 1))
    return int(max(1, min(fresh, most, by_memory)))


def numpy_pool(table: np.ndarray, indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum-pool rows of a float ``[R, D]`` array into bags, in plain vectorised numpy.

    Fixed-size bags (evenly spaced offsets, the benchmark's case) use :data:`NUMPY_METHOD`;
    other bags use a gather then ``np.add.reduceat`` (with empty bags set to zero).

    Example::

        >>> numpy_pool(np.eye(3, dtype=np.float32), np.array([0, 1, 2]), np.array([0, 1]))
        array([[1., 0., 0.],
               [0., 1., 1.]], dtype=float32)
    """
    indices = np.asarray(indices, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    batch = offsets.size
    if batch and indices.size % batch == 0:
        n = indices.size // batch
        if np.array_equal(offsets, np.arange(0, indices.size, n) if n else np.zeros(batch)):
            return _pool_fixed(table, indices, batch, n)
    out = np.zeros((batch, table.shape[1]), dtype=np.float32)
    lengths = np.diff(np.append(offsets, indices.size))
    nonempty = lengths > 0
    if indices.size:
        sums = np.add.reduceat(np.take(table, indices, axis=0).astype(np.float32, copy=False),
                               offsets[nonempty], axis=0)
        out[nonempty] = sums
    return out


def _pool_fixed(table: np.ndarray, indices: np.ndarray, batch: int, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros((batch, table.shape[1]), dtype=np.float32)
    rows = np.take(table, indices.reshape(batch, n), axis=0)  # [B, n, D]
    if n == 1:
        return rows.reshape(batch, -1)
    return np.einsum("bnd->bd", rows)


def _pool_fixed_int8(raw: np.ndarray, dim: int, indices: np.ndarray, batch: int,
                     n: int) -> np.ndarray:
    """Fused 8-bit rowwise rows ``[R, dim + 8]`` (codes, fp32 scale, fp32 bias) pooled into
    ``batch`` bags of ``n``: ``sum_j codes_j * scale_j + bias_j``."""
    if n == 0:
        return np.zeros((batch, dim), dtype=np.float32)
    rows = np.take(raw, indices.reshape(batch, n), axis=0)  # [B, n, dim + 8] uint8
    scale_bias = rows[..., dim:dim + 8].view(np.float32)  # [B, n, 2]
    if n == 1:
        return rows[:, 0, :dim] * scale_bias[:, 0, :1] + scale_bias[:, 0, 1:]
    # [B, 1, n] scales @ [B, n, dim] codes: the scale-weighted sum of each bag's codes.
    pooled = np.matmul(scale_bias[:, None, :, 0], rows[..., :dim].astype(np.float32))[:, 0]
    pooled += scale_bias[..., 1].sum(axis=1)[:, None]
    return pooled


def aligned(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``array`` whose data starts on an ``alignment``-byte boundary.

    Example::

        >>> aligned(np.ones((3, 5), np.float32)).ctypes.data % 64
        0
    """
    buf = np.empty(array.nbytes + alignment, dtype=np.uint8)
    start = -buf.ctypes.data % alignment
    out = buf[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


class Stage:
    """One model's embedding stage in one storage dtype, ready to run three ways.

    Args:
        tables: the model's recengine tables, all of the same dtype ("fp32" or "int8").
        torch: the torch module, or None to leave torch out.
        numpy: whether to prepare the numpy arrays (they share memory with torch's weights).

    Example::

        >>> import torch
        >>> stage = Stage([EmbeddingTable.random(1000, 32, seed=s) for s in range(3)], torch)
        >>> iset = make_index_sets(stage.specs(lookups=[2, 2, 2]), batch=4, torch=torch)[0]
        >>> np.allclose(stage.run("recengine", iset), stage.run("torch", iset), atol=1e-5)
        True
    """

    def __init__(self, tables: Sequence[EmbeddingTable], torch: Any = None,
                 numpy: bool = True) -> None:
        self.tables = list(tables)
        dtypes = {t.dtype for t in self.tables}
        if len(dtypes) != 1 or next(iter(dtypes)) not in BENCH_DTYPES:
            raise ValueError(f"a Stage needs tables of one dtype from {BENCH_DTYPES}, got "
                             f"{sorted(dtypes)}")
        self.dtype = dtypes.pop()
        self.collection = EmbeddingCollection(self.tables)
        self.torch = torch
        self.dims = [t.dim for t in self.tables]
        self.row_bytes = [t.row_bytes for t in self.tables]
        self.nbytes = sum(t.nbytes for t in self.tables)
        # Plain arrays: fp32 values, or the fused int8 rows exactly as recengine stores them.
        self.arrays: Optional[list[np.ndarray]] = None
        if numpy or torch is not None:
            # 64-byte aligned, as torch's own allocations and recengine's tables are: numpy's
            # default alignment (16 bytes) makes rows straddle one cache line more.
            self.arrays = [aligned(t.to_numpy() if self.dtype == "fp32" else t.raw_rows())
                           for t in self.tables]
        self._modules: list[Any] = []
        self._weights: list[Any] = []
        if torch is not None:
            assert self.arrays is not None
            weights = [torch.from_numpy(a) for a in self.arrays]  # zero-copy
            if self.dtype == "fp32":
                self._modules = [torch.nn.EmbeddingBag.from_pretrained(w, freeze=True,
                                                                       mode="sum").eval()
                                 for w in weights]
            else:
                self._weights = weights
                self._qop = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
        self.has_numpy = numpy

    def specs(self, lookups: Sequence[int]) -> list[TableSpec]:
        """The stage's tables as TableSpecs with the given pooling factors."""
        return [TableSpec(t.num_rows, t.dim, int(n)) for t, n in zip(self.tables, lookups)]

    def bytes_per_call(self, iset: IndexSet) -> int:
        """Bytes of rows one call reads."""
        return sum(int(i.size) * rb for i, rb in zip(iset.indices, self.row_bytes))

    def runner(self, impl: str) -> Callable[[IndexSet], Any]:
        """The function that runs the whole stage with ``impl`` on one IndexSet."""
        if impl == "recengine":
            return self._run_recengine
        if impl == "torch":
            if self.torch is None:
                raise RuntimeError("torch is not available for this stage")
            return self._run_torch_fp32 if self.dtype == "fp32" else self._run_torch_int8
        if impl == "numpy":
            if not self.has_numpy:
                raise RuntimeError("this stage was built without numpy arrays")
            return self._run_numpy
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")

    def run(self, impl: str, iset: IndexSet) -> np.ndarray:
        """Run the stage once with ``impl`` and return ``[B, sum(dims)]`` as a numpy array."""
        out = self.runner(impl)(iset)
        return out.numpy() if hasattr(out, "numpy") else np.asarray(out)

    def _run_recengine(self, iset: IndexSet) -> np.ndarray:
        return self.collection.lookup(iset.indices, offsets=iset.offsets)

    def _run_torch_fp32(self, iset: IndexSet) -> Any:
        torch = self.torch
        with torch.no_grad():
            outs = [m(i, o) for m, i, o in zip(self._modules, iset.torch_indices,
                                               iset.torch_offsets)]
            return torch.cat(outs, dim=1)

    def _run_torch_int8(self, iset: IndexSet) -> Any:
        torch, op = self.torch, self._qop
        with torch.no_grad():
            outs = [op(w, i, o, False, 0, False, None, None, False)
                    for w, i, o in zip(self._weights, iset.torch_indices, iset.torch_offsets)]
            return torch.cat(outs, dim=1)

    def _run_numpy(self, iset: IndexSet) -> np.ndarray:
        assert self.arrays is not None
        b = iset.batch
        if self.dtype == "fp32":
            outs = [_pool_fixed(a, i, b, i.size // b) for a, i in zip(self.arrays, iset.indices)]
        else:
            outs = [_pool_fixed_int8(a, d, i, b, i.size // b)
                    for a, d, i in zip(self.arrays, self.dims, iset.indices)]
        return np.concatenate(outs, axis=1)


class ModuleStage:
    """One model's fp32 embedding stage as torch modules, for the ``forward`` and
    ``forward_backward`` ops: three routes (:data:`MODULE_ROUTES`) on the same weights.

    * ``"torch"``: one ``torch.nn.EmbeddingBag(mode="sum")`` per table, called with 1-D
      indices and offsets, then ``torch.cat(dim=1)`` (what :meth:`Stage.runner` ``("torch")``
      runs);
    * ``"recengine"``: one :class:`recengine.nn.EmbeddingBagCollection` call on the set's
      prebuilt ``KeyedJaggedTensor``; its ``embedding_bags`` hold the torch modules themselves;
    * ``"modules"``: the drop-in route, :func:`recengine.nn.convert` of each torch module
      (sharing its weight Parameter) + ``torch.cat``.

    The weights are Parameters over the tables' numpy arrays (no copy; ``stage.arrays`` where
    the stage has them, so torch's pool modules read the same memory), with ``sparse=True``
    gradients unless ``grad="dense"``. Call :meth:`prepare` with a batch's index sets before
    running them. :meth:`runner` puts the modules in its op's mode (:meth:`set_mode`): for
    ``forward`` eval mode and weights that do not require grad (a frozen inference model: torch
    then takes its forward-only kernel, as the ``pool`` op's modules do; with weights that
    require grad it also builds the backward's bookkeeping, even under ``no_grad``), for
    ``forward_backward`` train mode and weights that require grad.

    Args:
        stage: an fp32 :class:`Stage`.
        torch: the torch module.
        grad: "sparse" or "dense" weight gradients.

    Example::

        >>> import torch
        >>> stage = Stage([EmbeddingTable.random(1000, 32, seed=s) for s in range(3)], torch)
        >>> sets = make_index_sets(stage.specs(lookups=[2, 2, 2]), batch=4, torch=torch)
        >>> mstage = ModuleStage(stage, torch)
        >>> mstage.prepare(sets)
        >>> step = mstage.runner("recengine", "forward_backward")
        >>> step(sets[0]).shape
        torch.Size([4, 96])
    """

    def __init__(self, stage: Stage, torch: Any, grad: str = "sparse") -> None:
        if stage.dtype != "fp32":
            raise ValueError(f"a ModuleStage needs fp32 tables, got {stage.dtype}")
        if grad not in GRAD_KINDS:
            raise ValueError(f"grad must be one of {', '.join(GRAD_KINDS)}, got {grad!r}")
        import recengine.nn as rnn

        self.torch, self.grad = torch, grad
        sparse = grad == "sparse"
        arrays = stage.arrays if stage.arrays is not None else [t.to_numpy()
                                                                  for t in stage.tables]
        self.dims = list(stage.dims)
        self.keys = [f"f{t}" for t in range(len(arrays))]
        self.modules = [torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(a), freeze=False,
                                                              mode="sum", sparse=sparse)
                        for a in arrays]
        self.params = [m.weight for m in self.modules]
        configs = [rnn.EmbeddingBagConfig(num_embeddings=a.shape[0], embedding_dim=a.shape[1],
                                          name=f"t{t}", feature_names=[key])
                   for t, (a, key) in enumerate(zip(arrays, self.keys))]
        # On the meta device the constructor allocates nothing; the real weights go in next.
        self.ebc = rnn.EmbeddingBagCollection(configs, sparse=sparse, device="meta")
        for t, module in enumerate(self.modules):
            self.ebc.embedding_bags[f"t{t}"] = module
        self.converted = [rnn.convert(m) for m in self.modules]
        self._kjt_class = rnn.KeyedJaggedTensor
        self._kjts: dict[int, tuple[IndexSet, Any]] = {}
        self._grad_out: Any = None

    def prepare(self, sets: Sequence[IndexSet], seed: int = 0) -> None:
        """Build each set's KeyedJaggedTensor (zero-copy over ``IndexSet.values`` where it
        exists) and the fixed random output gradient ``g`` ``[B, sum(D)]`` of their batch."""
        torch = self.torch
        self._kjts.clear()  # in place: the runners made earlier see the new sets
        for iset in sets:
            b = iset.batch
            if iset.torch_indices is None:
                raise ValueError("the index sets need torch views (make_index_sets(torch=...))")
            values = (torch.from_numpy(iset.values) if iset.values is not None
                      else torch.cat(iset.torch_indices))
            # Table-major lengths: table 0's B bag sizes, then table 1's, ...
            lengths = torch.from_numpy(np.repeat(
                np.array([i.size // b for i in iset.indices], dtype=np.int64), b))
            kjt = self._kjt_class(keys=self.keys, values=values, lengths=lengths)
            self._kjts[id(iset)] = (iset, kjt)
        if sets:
            gen = torch.Generator().manual_seed(seed * 1000 + sets[0].batch)
            self._grad_out = torch.randn(sets[0].batch, sum(self.dims), generator=gen)

    def kjt(self, iset: IndexSet) -> Any:
        """The prepared KeyedJaggedTensor of ``iset``."""
        entry = self._kjts.get(id(iset))
        if entry is None or entry[0] is not iset:
            raise KeyError("this index set was not prepared (ModuleStage.prepare)")
        return entry[1]

    def _forward(self, route: str) -> Callable[[IndexSet], Any]:
        torch = self.torch
        if route == "recengine":
            ebc, kjts = self.ebc, self._kjts

            def run_ebc(iset: IndexSet) -> Any:
                return ebc(kjts[id(iset)][1]).values()
            return run_ebc
        if route in ("torch", "modules"):
            modules = self.modules if route == "torch" else self.converted

            def run_modules(iset: IndexSet) -> Any:
                return torch.cat([m(i, o) for m, i, o in zip(modules, iset.torch_indices,
                                                             iset.torch_offsets)], dim=1)
            return run_modules
        raise ValueError(f"unknown route {route!r}; expected one of {MODULE_ROUTES}")

    def set_mode(self, op: str) -> None:
        """Eval mode and frozen weights for ``forward``; train mode and weights that require
        grad for ``forward_backward``."""
        if op not in MODULE_OPS:
            raise ValueError(f"unknown module op {op!r}; expected one of {MODULE_OPS}")
        train = op == "forward_backward"
        self.ebc.train(train)
        for m in (*self.modules, *self.converted):
            m.train(train)
        for p in self.params:
            p.grad = None
            p.requires_grad_(train)

    def runner(self, route: str, op: str) -> Callable[[IndexSet], Any]:
        """The timed call of ``op`` with ``route`` on one prepared IndexSet: for "forward" the
        ``[B, sum(D)]`` output under ``torch.no_grad()``; for "forward_backward" forward,
        ``out.backward(g)``, every weight's ``.grad`` set to None, returning the detached output.
        Puts the modules in ``op``'s mode (:meth:`set_mode`).
        """
        torch = self.torch
        forward = self._forward(route)
        self.set_mode(op)
        if op == "forward":
            def run(iset: IndexSet) -> Any:
                with torch.no_grad():
                    return forward(iset)
            return run
        if op == "forward_backward":
            params = self.params

            def step(iset: IndexSet) -> Any:
                with torch.enable_grad():
                    out = forward(iset)
                    out.backward(self._grad_out)
                for p in params:
                    p.grad = None
                return out.detach()
            return step
        raise ValueError(f"unknown module op {op!r}; expected one of {MODULE_OPS}")

    def gradients(self, route: str, iset: IndexSet) -> tuple[Any, list[Any]]:
        """One untimed training step of ``route`` on ``iset``: its output and every table's
        weight gradient (sparse ones coalesced), the ``.grad`` fields cleared before and after.
        Puts the modules in training mode (:meth:`set_mode`)."""
        torch = self.torch
        self.set_mode("forward_backward")
        with torch.enable_grad():
            out = self._forward(route)(iset)
            out.backward(self._grad_out)
        grads = [None if p.grad is None else
                 (p.grad.coalesce() if p.grad.is_sparse else p.grad.clone())
                 for p in self.params]
        for p in self.params:
            p.grad = None
        return out.detach(), grads


# --------------------------------------------------------------------------------------------
# timing


class _Evictor:
    """Writes a buffer larger than the last-level cache, so the next call starts cold."""

    def __init__(self, mb: float) -> None:
        self.buf = np.zeros(int(mb * 2**20), dtype=np.uint8) if mb > 0 else None

    def __call__(self) -> None:
        if self.buf is not None:
            np.add(self.buf, 1, out=self.buf)


class _Timer:
    """Times one implementation in blocks of calls, cycling through the index sets; the
    first block starts with the warm-up calls, whose first output is kept for the checks."""

    def __init__(self, fn: Callable[[IndexSet], Any], sets: Sequence[IndexSet],
                 warmup: int) -> None:
        self.fn, self.sets, self.warmup = fn, sets, warmup
        self.calls = 0
        self.times: list[float] = []
        self.first: Any = None

    def warm(self) -> None:
        """The warm-up calls, once (the first output is kept)."""
        if self.calls == 0:
            for k in range(max(self.warmup, 1)):
                out = self.fn(self.sets[k % len(self.sets)])
                if k == 0:
                    self.first = out
            self.calls = max(self.warmup, 1)

    def one(self) -> float:
        """One timed call on the next index set; its seconds."""
        iset = self.sets[self.calls % len(self.sets)]
        t0 = time.perf_counter()
        self.fn(iset)
        t = time.perf_counter() - t0
        self.times.append(t)
        self.calls += 1
        return t

    def block(self, max_calls: int, budget_s: float) -> None:
        """Up to ``max_calls`` timed calls, stopping once ``budget_s`` is spent (>= 1 call)."""
        fn, sets = self.fn, self.sets
        self.warm()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(max(max_calls, 1)):
                iset = sets[self.calls % len(sets)]
                t0 = time.perf_counter()
                fn(iset)
                t1 = time.perf_counter()
                self.times.append(t1 - t0)
                self.calls += 1
                if t1 - start >= budget_s:
                    break
        finally:
            if gc_was_enabled:
                gc.enable()

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _measure(fn: Callable[[IndexSet], Any], sets: Sequence[IndexSet], repeats: int,
             budget_s: float, warmup: int) -> tuple[float, int, Any]:
    """(median seconds, timed calls, output of the first call on ``sets[0]``)."""
    timer = _Timer(fn, sets, warmup)
    timer.block(repeats, budget_s)
    return timer.median, len(timer.times), timer.first


def _probe_round(stage: Stage, per_table: Sequence[np.ndarray]) -> float:
    """One cold pass of a plain gather of ``per_table[t]``'s rows of every table t, table by
    table, in the core's threads (``_core.gather_probe``): seconds."""
    return sum(float(_core.gather_probe(table._t, idx, 1))
               for table, idx in zip(stage.tables, per_table))


def outputs_agree(a: Any, b: Any, lookups_per_bag: int = 1) -> tuple[bool, float]:
    """Whether two pooled outputs (numpy or torch) agree to fp32 rounding for bags of up to
    ``lookups_per_bag`` rows, and their largest absolute difference."""
    a = np.asarray(a.numpy() if hasattr(a, "numpy") else a)
    b = np.asarray(b.numpy() if hasattr(b, "numpy") else b)
    if a.shape != b.shape:
        return False, math.inf
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    atol = _ATOL_PER_LOOKUP * max(1, lookups_per_bag)
    return bool(np.allclose(a, b, rtol=_RTOL, atol=atol)), diff


def grads_agree(a: Sequence[Any], b: Sequence[Any],
                max_hits: Sequence[int]) -> tuple[bool, float]:
    """Whether two lists of per-table weight gradients (torch tensors, sparse ones coalesced)
    agree: the same rows exactly and values to fp32 rounding for rows summed from up to
    ``max_hits[t]`` lookups; and the largest absolute difference."""
    ok, worst = True, 0.0
    for ga, gb, hits in zip(a, b, max_hits):
        if ga is None or gb is None:
            if ga is not gb:
                return False, math.inf
            continue
        if ga.is_sparse != gb.is_sparse or tuple(ga.shape) != tuple(gb.shape):
            return False, math.inf
        if ga.is_sparse:
            ia, ib = ga.indices().numpy(), gb.indices().numpy()
            if ia.shape != ib.shape or not np.array_equal(ia, ib):
                return False, math.inf
            ga, gb = ga.values(), gb.values()
        agree, diff = outputs_agree(ga, gb, hits)
        ok, worst = ok and agree, max(worst, diff)
    return ok, worst


def _per_second(lookups: int, seconds: Optional[float]) -> Optional[float]:
    return lookups / seconds if seconds else None


def _case_sets(row_bytes: Sequence[int], specs: Sequence[TableSpec], batch: int,
               config: BenchConfig, torch: Any = None) -> list[IndexSet]:
    """The index sets one (stage, batch) cycles through (see :func:`index_set_count`), for
    tables of ``row_bytes`` bytes a row."""
    lookups_per_call = batch * sum(s.lookups for s in specs)
    bytes_per_call = batch * sum(s.lookups * rb for s, rb in zip(specs, row_bytes))
    per_block = math.ceil(config.repeats / config.rounds)
    n_sets = index_set_count(bytes_per_call, lookups_per_call, config.fresh_mb,
                             per_block * config.rounds + config.warmup)
    return make_index_sets(specs, batch, n_sets, seed=config.seed, torch=torch)


def _run_rounds(timers: dict[str, _Timer], config: BenchConfig, evict: _Evictor,
                after_round: Optional[Callable[[], None]] = None) -> None:
    """Time every timer: call by call in turn (``config.timing == "alternate"``, the order
    rotating each turn so that none always follows the same one), or ``config.rounds`` rounds,
    each timing every timer in turn for one block (cache flushed before each), so that a slow
    spell of the machine (other tenants, frequency changes) falls on all of them rather than
    on one; ``after_round`` runs at the end of each round (once, when alternating)."""
    if config.timing == "alternate":
        _alternate(list(timers.values()), config.repeats, config.budget_s)
        if after_round is not None:
            after_round()
        return
    per_block = math.ceil(config.repeats / config.rounds)
    for _ in range(config.rounds):
        for timer in timers.values():
            evict()
            timer.block(per_block, config.budget_s / config.rounds)
        if after_round is not None:
            after_round()


def _alternate(timers: Sequence[_Timer], repeats: int, budget_s: float) -> None:
    """Up to ``repeats`` turns in which every timer makes one timed call, stopping once the
    calls of every timer have used ``budget_s`` seconds each (at least one turn)."""
    for timer in timers:
        timer.warm()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        spent = 0.0
        for turn in range(max(repeats, 1)):
            k = turn % len(timers)
            for timer in (*timers[k:], *timers[:k]):
                spent += timer.one()
            if spent >= budget_s * len(timers):
                break
    finally:
        if gc_was_enabled:
            gc.enable()


def case_name(row: dict[str, Any]) -> str:
    """A row's short name: ``model/dtype/bBATCH``, then ``/op`` for the module ops."""
    op = row.get("op", "pool")
    return f"{row['model']}/{row['dtype']}/b{row['batch']}" + ("" if op == "pool" else f"/{op}")


def bench_case(
    stage: Stage,
    specs: Sequence[TableSpec],
    batch: int,
    config: BenchConfig,
    evict: Optional[_Evictor] = None,
    model: str = "",
    sets: Optional[Sequence[IndexSet]] = None,
) -> dict[str, Any]:
    """Measure one (stage, batch) of the ``"pool"`` op: every implementation in
    ``config.impls`` on the same index sets, the probe, and the cross-checks. Returns one
    result row (see :func:`run_bench`). ``sets`` (with torch views where torch is timed) are
    drawn here when not given."""
    evict = evict or _Evictor(0)
    lookups_per_call = batch * sum(s.lookups for s in specs)
    bytes_per_call = batch * sum(s.lookups * rb for s, rb in zip(specs, stage.row_bytes))
    if sets is None:
        sets = _case_sets(stage.row_bytes, specs, batch, config,
                          torch=stage.torch if "torch" in config.impls else None)
    n_sets = len(sets)
    timers = {impl: _Timer(stage.runner(impl), sets, config.warmup) for impl in IMPLEMENTATIONS
              if impl in config.impls and not (impl == "torch" and stage.torch is None)}
    # The roofline gathers every set's rows (what one cycle of calls reads), once per round.
    probe_rows = ([np.concatenate([s.indices[t] for s in sets]) for t in range(len(specs))]
                  if config.probe else None)
    probe_best = math.inf

    def probe() -> None:
        nonlocal probe_best
        if probe_rows is not None:
            evict()
            probe_best = min(probe_best, _probe_round(stage, probe_rows))

    _run_rounds(timers, config, evict, probe)
    seconds: dict[str, Optional[float]] = dict.fromkeys(IMPLEMENTATIONS)
    calls: dict[str, int] = dict.fromkeys(IMPLEMENTATIONS, 0)
    outputs: dict[str, Any] = {}
    for impl, timer in timers.items():
        seconds[impl], calls[impl] = timer.median, len(timer.times)
        first = timer.first
        outputs[impl] = first.numpy() if hasattr(first, "numpy") else np.asarray(first)

    n_max = max(s.lookups for s in specs)
    correct_vs_torch = diff_torch = correct_vs_numpy = diff_numpy = None
    if "torch" in outputs:
        correct_vs_torch, diff_torch = outputs_agree(outputs["recengine"], outputs["torch"], n_max)
    if "numpy" in outputs:
        correct_vs_numpy, diff_numpy = outputs_agree(outputs["recengine"], outputs["numpy"], n_max)
    checks = [c for c in (correct_vs_torch, correct_vs_numpy) if c is not None]
    correct = all(checks) if checks else None
    torch_matches_numpy = None
    if "torch" in outputs and "numpy" in outputs:
        torch_matches_numpy = outputs_agree(outputs["torch"], outputs["numpy"], n_max)[0]

    seconds["probe"] = probe_best / len(sets) if probe_rows is not None else None
    row = _row(model, batch, stage.dtype, "pool", None, len(specs), lookups_per_call,
               bytes_per_call, stage.nbytes / 2**20, seconds, calls, n_sets, checks={
                   "correct": correct, "correct_vs_torch": correct_vs_torch,
                   "correct_vs_numpy": correct_vs_numpy,
                   "torch_matches_numpy": torch_matches_numpy,
                   "max_abs_diff_vs_torch": diff_torch, "max_abs_diff_vs_numpy": diff_numpy})
    if config.per_table:
        row["tables_detail"] = _per_table_rows(stage, sets, config, evict)
    return row


def _per_table_rows(stage: Stage, sets: Sequence[IndexSet], config: BenchConfig,
                    evict: _Evictor) -> list[dict[str, Any]]:
    """Each table alone: recengine ``EmbeddingTable.lookup`` vs torch's per-table call."""
    torch = stage.torch if "torch" in config.impls else None
    rows = []
    budget = config.budget_s / 4
    for t, table in enumerate(stage.tables):
        def rec(iset: IndexSet, t: int = t, table: EmbeddingTable = table) -> Any:
            return table.lookup(iset.indices[t], offsets=iset.offsets[t])

        evict()
        rec_s = _measure(rec, sets, config.repeats, budget, config.warmup)[0]
        torch_s = None
        if torch is not None:
            if stage.dtype == "fp32":
                module = stage._modules[t]

                def tfn(iset: IndexSet, t: int = t, module: Any = module) -> Any:
                    with torch.no_grad():
                        return module(iset.torch_indices[t], iset.torch_offsets[t])
            else:
                weight = stage._weights[t]

                def tfn(iset: IndexSet, t: int = t, weight: Any = weight) -> Any:
                    return stage._qop(weight, iset.torch_indices[t], iset.torch_offsets[t],
                                      False, 0, False, None, None, False)
            evict()
            torch_s = _measure(tfn, sets, config.repeats, budget, config.warmup)[0]
        lookups = int(sets[0].indices[t].size)
        rows.append({
            "table": t,
            "num_rows": table.num_rows,
            "dim": table.dim,
            "lookups": lookups,
            "recengine_s": rec_s,
            "torch_s": torch_s,
            "recengine_lookups_per_s": _per_second(lookups, rec_s),
            "torch_lookups_per_s": _per_second(lookups, torch_s),
            "ratio_vs_torch": torch_s / rec_s if torch_s and rec_s else None,
        })
    return rows


def bench_module_case(
    mstage: ModuleStage,
    specs: Sequence[TableSpec],
    batch: int,
    op: str,
    config: BenchConfig,
    evict: Optional[_Evictor] = None,
    model: str = "",
    sets: Optional[Sequence[IndexSet]] = None,
) -> dict[str, Any]:
    """Measure one (stage, batch) of a module op ("forward" or "forward_backward", see
    :class:`ModuleStage`): recengine's EmbeddingBagCollection, torch's modules (when "torch"
    is in ``config.impls``) and the drop-in modules, in alternating rounds on the same index
    sets (``sets``, with torch views, are drawn here when not given). Their outputs, and for
    the training step every table's weight gradient, are first checked against torch's, once
    and untimed. Returns one result row (see :func:`run_bench`)."""
    if op not in MODULE_OPS:
        raise ValueError(f"unknown module op {op!r}; expected one of {MODULE_OPS}")
    evict = evict or _Evictor(0)
    row_bytes = [4 * d for d in mstage.dims]
    lookups_per_call = batch * sum(s.lookups for s in specs)
    bytes_per_call = batch * sum(s.lookups * rb for s, rb in zip(specs, row_bytes))
    if sets is None:
        sets = _case_sets(row_bytes, specs, batch, config, torch=mstage.torch)
    mstage.prepare(sets, seed=config.seed)

    # The checks, untimed, on the first set: every route against torch's modules.
    n_max = max(s.lookups for s in specs)
    iset = sets[0]
    checks: dict[str, tuple[bool, float]] = {}
    if op == "forward":
        reference = mstage.runner("torch", op)(iset)
        for route in ("recengine", "modules"):
            checks[route] = outputs_agree(mstage.runner(route, op)(iset), reference, n_max)
    else:
        # A gradient row sums one row of g per lookup of that row.
        hits = [int(np.bincount(i).max()) if i.size else 1 for i in iset.indices]
        ref_out, ref_grads = mstage.gradients("torch", iset)
        for route in ("recengine", "modules"):
            out, grads = mstage.gradients(route, iset)
            ok_out, diff_out = outputs_agree(out, ref_out, n_max)
            ok_grad, diff_grad = grads_agree(grads, ref_grads, hits)
            checks[route] = (ok_out and ok_grad, max(diff_out, diff_grad))
            del grads
        del ref_grads
    gc.collect()

    routes = [r for r in MODULE_ROUTES if r != "torch" or "torch" in config.impls]
    timers = {r: _Timer(mstage.runner(r, op), sets, config.warmup) for r in routes}
    _run_rounds(timers, config, evict)
    seconds: dict[str, Optional[float]] = {r: timers[r].median if r in timers else None
                                           for r in MODULE_ROUTES}
    calls = {r: len(timers[r].times) if r in timers else 0 for r in MODULE_ROUTES}
    del timers

    forward = op == "forward"
    table_mb = sum(s.num_rows * rb for s, rb in zip(specs, row_bytes)) / 2**20
    # Row bytes read per second: a forward's whole traffic, not a training step's.
    return _row(model, batch, "fp32", op, None if forward else mstage.grad, len(specs),
                lookups_per_call, bytes_per_call, table_mb, seconds, calls, len(sets),
                traffic=forward, checks={
                    "correct": checks["recengine"][0] and checks["modules"][0],
                    "correct_vs_torch": checks["recengine"][0],
                    "max_abs_diff_vs_torch": checks["recengine"][1],
                    "modules_correct_vs_torch": checks["modules"][0],
                    "modules_max_abs_diff_vs_torch": checks["modules"][1]})


#: What a row's correctness fields are, all None unless a case sets them.
_CHECKS = ("correct", "correct_vs_torch", "correct_vs_numpy", "torch_matches_numpy",
           "max_abs_diff_vs_torch", "max_abs_diff_vs_numpy", "modules_correct_vs_torch",
           "modules_max_abs_diff_vs_torch")
#: The timed routes of a row: the pool op's implementations, the probe, the drop-in modules.
_ROUTES = ("recengine", "torch", "numpy", "probe", "modules")


def _row(model: str, batch: int, dtype: str, op: str, grad: Optional[str], tables: int,
         lookups: int, bytes_per_call: int, table_mb: float,
         seconds: dict[str, Optional[float]], calls: dict[str, int], index_sets: int,
         checks: dict[str, Any], traffic: bool = True) -> dict[str, Any]:
    """One result row (the one schema of every op): each route's median seconds, rates and
    ratios derived the same way, ``None`` where a route was not timed; GB/s only where
    ``traffic`` (a call's bytes are its whole traffic)."""
    t = {r: seconds.get(r) for r in _ROUTES}
    rec = t["recengine"]

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a and b else None

    def gb_per_s(x: Optional[float]) -> Optional[float]:
        return bytes_per_call / x / 1e9 if traffic and x else None

    return {
        "model": model, "batch": batch, "dtype": dtype, "op": op, "grad": grad,
        "threads": get_num_threads(), "tables": tables, "lookups": lookups,
        "bytes_per_call": bytes_per_call, "table_mb": table_mb,
        **{f"{r}_s": t[r] for r in _ROUTES},
        **{f"{r}_lookups_per_s": _per_second(lookups, t[r]) for r in _ROUTES},
        "ratio_vs_torch": ratio(t["torch"], rec),
        "ratio_vs_numpy": ratio(t["numpy"], rec),
        "ratio_modules_vs_torch": ratio(t["torch"], t["modules"]),
        "recengine_gb_per_s": gb_per_s(rec),
        "torch_gb_per_s": gb_per_s(t["torch"]),
        "probe_gb_per_s": gb_per_s(t["probe"]),
        "probe_fraction": ratio(t["probe"], rec),
        **{k: checks.get(k) for k in _CHECKS},
        **{f"{r}_calls": calls.get(r) for r in ("recengine", "torch", "numpy", "modules")},
        "index_sets": index_sets,
    }


# --------------------------------------------------------------------------------------------
# driver


def iter_bench(
    config: Optional[BenchConfig] = None,
    status: Optional[Callable[[str], None]] = None,
) -> Iterator[dict[str, Any]]:
    """Run the benchmark, yielding one row per (model, dtype, batch, op) as it is measured:
    for each batch, the ops in :data:`OPS` order on the same index sets.

    Models run one after the other; a model's tables are freed before the next model's are
    built. ``status`` is called with a short text whenever setup work starts. The module ops
    need torch: without it they are left out (torch's absence warns once).
    """
    config = config or BenchConfig()
    say = status or (lambda _msg: None)
    module_ops = [op for op in config.ops if op in MODULE_OPS]
    torch = _torch() if "torch" in config.impls or module_ops else None
    pool_torch = torch if "torch" in config.impls else None
    if torch is None:
        module_ops = []
    dtypes = [d for d in config.dtypes if "pool" in config.ops or (d == "fp32" and module_ops)]
    threads = config.threads or default_threads()
    evict = _Evictor(config.evict_mb)
    with _Threads(threads, torch):
        for model in config.models:
            scale = config.model_scale(model)
            specs = model_tables(model, scale, config.min_rows)
            mb = sum(s.nbytes() for s in specs) / 2**20
            say(f"{model}: building {len(specs)} tables ({mb:,.0f} MiB fp32, scale {scale:.3g})")
            base = [EmbeddingTable.random(s.num_rows, s.dim, "fp32",
                                          seed=config.seed * 1000 + t)
                    for t, s in enumerate(specs)]
            for k, dtype in enumerate(dtypes):
                if dtype == "fp32":
                    tables = base
                else:
                    say(f"{model}: quantizing to {dtype}")
                    tables = [t.quantize(dtype) for t in base]
                if k == len(dtypes) - 1:
                    base = []  # the last dtype: let the fp32 tables go as soon as possible
                say(f"{model}: preparing the {dtype} stage")
                pool = "pool" in config.ops
                stage = Stage(tables, pool_torch if pool else None,
                              numpy=pool and "numpy" in config.impls)
                del tables
                ops = [op for op in config.case_ops(dtype) if op == "pool" or op in module_ops]
                mstage = None
                if any(op in MODULE_OPS for op in ops):
                    say(f"{model}: preparing the {dtype} modules")
                    mstage = ModuleStage(stage, torch, config.grad)
                for batch in config.batches:
                    sets = _case_sets(stage.row_bytes, specs, batch, config, torch=torch)
                    for op in ops:
                        say(f"{model} {dtype} batch {batch} {op}")
                        if op == "pool":
                            row = bench_case(stage, specs, batch, config, evict, model=model,
                                             sets=sets)
                        else:
                            assert mstage is not None
                            row = bench_module_case(mstage, specs, batch, op, config, evict,
                                                    model=model, sets=sets)
                        row["scale"] = scale
                        yield row
                    del sets
                del stage, mstage
                gc.collect()
            del base
            gc.collect()


def planned_rows(config: BenchConfig) -> int:
    """How many rows :func:`iter_bench` yields for ``config`` (the module ops count only where
    torch imports; checking may warn once that it does not)."""
    module_ops = [op for op in config.ops if op in MODULE_OPS]
    if module_ops and _torch() is None:
        module_ops = []
    per_model = sum(len([op for op in config.case_ops(d) if op == "pool" or op in module_ops])
                    for d in config.dtypes)
    return len(config.models) * len(config.batches) * per_model


def run_bench(
    config: Optional[BenchConfig] = None,
    status: Optional[Callable[[str], None]] = None,
) -> list[dict[str, Any]]:
    """Run the benchmark and return its rows.

    Every row holds: ``model``, ``batch``, ``dtype``, ``op`` (from :data:`OPS`), ``grad`` (the
    training step's "sparse" or "dense", else None), ``threads``, ``tables``, ``lookups``
    (rows pooled per call, all tables), ``bytes_per_call``, ``table_mb``, ``scale``; the median
    seconds per call ``recengine_s``, ``torch_s``, ``numpy_s``, ``probe_s``, ``modules_s``; the
    matching ``*_lookups_per_s``; ``ratio_vs_torch`` and ``ratio_vs_numpy`` (> 1: recengine is
    faster), ``ratio_modules_vs_torch`` (the drop-in modules' speed over torch's);
    ``recengine_gb_per_s`` (row bytes read / time), ``probe_fraction`` (probe time / recengine
    time); ``correct`` (recengine's output, and for the module ops the drop-in modules' and the
    weight gradients, match torch's and numpy's), the separate checks and largest differences;
    and how many calls and index sets each median came from. Columns that do not apply to a
    row's op (numpy and the probe for the module ops, the modules for ``pool``), and torch
    columns without torch, are None.
    """
    return list(iter_bench(config, status))


def config_dict(config: BenchConfig) -> dict[str, Any]:
    """The config as plain JSON-ready data."""
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# summary


def _geomean(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _spread(rows: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    vals = [(r[key], r) for r in rows if r.get(key) is not None]
    if not vals:
        return {"geomean": None, "min": None, "max": None, "n": 0, "min_at": None}
    lo = min(vals, key=lambda v: v[0])
    hi = max(vals, key=lambda v: v[0])
    return {
        "geomean": _geomean([v for v, _ in vals]),
        "min": lo[0],
        "max": hi[0],
        "n": len(vals),
        "min_at": f"{lo[1]['model']}/{lo[1]['dtype']}/b{lo[1]['batch']}",
    }


def _batch_groups(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {"small_batch": [r for r in rows if r["batch"] <= 16],
            "large_batch": [r for r in rows if r["batch"] >= 64],
            "all": list(rows)}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's target metrics from :func:`run_bench` rows.

    Of the ``pool`` op (rows without an ``op`` count as ``pool``):

    * ``ratio_vs_torch_large_batch``: fp32, batch >= 64: geometric mean, min (and where) of
      recengine speed / torch speed;
    * ``ratio_vs_torch_small_batch``: the same at batch <= 16;
    * ``ratio_vs_torch_int8``: int8 at every batch;
    * ``int8_over_fp32``: recengine int8 lookups/s over fp32 lookups/s, per (model, batch);
    * ``probe_fraction_batch_1024``: per dtype, probe time / recengine time at batch 1024.

    Per op, ``per_op[op]`` (fp32 rows): ``small_batch`` (batch <= 16), ``large_batch``
    (batch >= 64) and ``all``, each the spread of ``ratio_vs_torch``; ``modules_vs_torch``
    (``ratio_modules_vs_torch`` at every batch); ``targets``, one per :data:`OP_TARGETS` entry:
    the group, the ``target`` ratio, that group's ``geomean`` and ``min`` and ``met`` (every
    case of the group reaches the target; None without cases); and ``all_correct``.

    Over every row:

    * ``slower_than_torch``: every (model, batch, dtype, op) where torch was faster;
    * ``all_correct``: every checked output agreed (None when nothing was checked), and
      ``incorrect``: the cases that did not (:func:`case_name`).
    """
    pool = [r for r in rows if r.get("op", "pool") == "pool"]
    fp32 = [r for r in pool if r["dtype"] == "fp32"]
    out: dict[str, Any] = {
        "ratio_vs_torch_large_batch": _spread([r for r in fp32 if r["batch"] >= 64],
                                              "ratio_vs_torch"),
        "ratio_vs_torch_small_batch": _spread([r for r in fp32 if r["batch"] <= 16],
                                              "ratio_vs_torch"),
        "ratio_vs_torch_int8": _spread([r for r in pool if r["dtype"] == "int8"],
                                       "ratio_vs_torch"),
    }
    by_key = {(r["model"], r["batch"], r["dtype"]): r for r in pool}
    pairs = []
    for (model, batch, dtype), r in by_key.items():
        base = by_key.get((model, batch, "fp32"))
        if dtype == "int8" and base and r["recengine_lookups_per_s"] and \
                base["recengine_lookups_per_s"]:
            pairs.append({"model": model, "batch": batch, "dtype": "int8",
                          "int8_over_fp32": r["recengine_lookups_per_s"]
                          / base["recengine_lookups_per_s"]})
    out["int8_over_fp32"] = _spread(pairs, "int8_over_fp32")
    out["probe_fraction_batch_1024"] = {
        dtype: _spread([r for r in pool if r["dtype"] == dtype and r["batch"] == 1024],
                       "probe_fraction")
        for dtype in sorted({r["dtype"] for r in pool})
    }
    per_op: dict[str, Any] = {}
    present = {r.get("op", "pool") for r in rows}
    for op in [o for o in OPS if o in present]:
        op_rows = [r for r in rows if r.get("op", "pool") == op and r["dtype"] == "fp32"]
        groups = {name: _spread(rs, "ratio_vs_torch")
                  for name, rs in _batch_groups(op_rows).items()}
        targets = []
        for group, target in OP_TARGETS.get(op, ()):
            spread = groups[group]
            targets.append({"group": group, "target": target, "geomean": spread["geomean"],
                            "min": spread["min"], "min_at": spread["min_at"],
                            "n": spread["n"],
                            "met": None if spread["min"] is None else spread["min"] >= target})
        checked = [r["correct"] for r in op_rows if r.get("correct") is not None]
        per_op[op] = {**groups,
                      "modules_vs_torch": _spread(op_rows, "ratio_modules_vs_torch"),
                      "targets": targets,
                      "all_correct": all(checked) if checked else None}
    out["per_op"] = per_op
    out["slower_than_torch"] = [
        {"model": r["model"], "batch": r["batch"], "dtype": r["dtype"],
         "op": r.get("op", "pool"),
         "ratio_vs_torch": r["ratio_vs_torch"],
         "recengine_lookups_per_s": r["recengine_lookups_per_s"],
         "torch_lookups_per_s": r["torch_lookups_per_s"]}
        for r in rows if r.get("ratio_vs_torch") is not None and r["ratio_vs_torch"] < 1.0
    ]
    checked = [r["correct"] for r in rows if r.get("correct") is not None]
    out["all_correct"] = all(checked) if checked else None
    out["incorrect"] = [case_name(r) for r in rows if r.get("correct") is False]
    return out


def plot_bench(rows: Sequence[dict[str, Any]], path: str,
               config: Optional[BenchConfig] = None) -> None:
    """Speed ratio over torch per model and batch, one panel per (op, dtype) measured, with
    the 1x parity line; a log axis labelled in x where the ratios span a wide range."""
    from matplotlib.ticker import FuncFormatter

    from .studies._output import figure, save_figure

    panels = [(op, d) for op in OPS for d in BENCH_DTYPES
              if any(r.get("op", "pool") == op and r["dtype"] == d for r in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = figure(len(panels), size=(max(6.0, 1.3 * len(models) + 2), 3.8))
    width = 0.8 / max(len(batches), 1)
    for ax, (op, dtype) in zip(axes, panels):
        lookup = {(r["model"], r["batch"]): r["ratio_vs_torch"] for r in rows
                  if r["dtype"] == dtype and r.get("op", "pool") == op}
        for j, batch in enumerate(batches):
            xs = [i + (j - (len(batches) - 1) / 2) * width for i in range(len(models))]
            ys = [lookup.get((m, batch)) or 0.0 for m in models]
            ax.bar(xs, ys, width, label=f"batch {batch}")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="as fast as torch")
        ax.set_xticks(range(len(models)), models)
        ax.set_xlabel("model")
        ax.set_ylabel("torch time / recengine time (x)")
        ax.set_title(f"{op}, {dtype} (> 1x: recengine faster)", fontsize="medium")
        values = [v for v in lookup.values() if v]
        if values and max(values) / min(values) > 8:
            ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    threads = (config.threads if config is not None and config.threads else default_threads())
    save_figure(fig, path, f"recengine against torch, {threads} threads, "
                           f"{os.cpu_count()} CPUs")
