"""Type stub of the compiled extension ``recengine._core`` (built from ``rust/py``).

Users should import from :mod:`recengine`; this module is private and its names may change.
Every long call releases the GIL. Errors map to Python exceptions in one place
(``rust/py/src/errors.rs``): bad indices raise IndexError, bad shapes or values ValueError,
unsupported dtypes TypeError, file problems OSError.
"""

from typing import Any, Optional, Sequence, TypedDict, final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ORAM_BUCKET",
    "ORAM_STASH_LIMIT",
    "BlobCache",
    "CacheDirectory",
    "Collection",
    "KeyedTables",
    "Oram",
    "RecengineError",
    "RecengineIndexError",
    "RecengineMemoryError",
    "RecengineOSError",
    "RecengineTypeError",
    "RecengineValueError",
    "Routed",
    "Router",
    "ShardedCollection",
    "Table",
    "__version__",
    "available_simd_levels",
    "build_info",
    "dram_defaults",
    "dram_run",
    "dram_validate",
    "gather_probe",
    "get_num_threads",
    "get_thread_pool",
    "nmp_defaults",
    "nmp_emulate",
    "pool_array",
    "pool_backward",
    "pool_keyed_backward",
    "prefetch_distance",
    "row_bytes",
    "safetensors_names",
    "set_num_threads",
    "set_simd_level",
    "set_thread_pool",
    "simd_level",
    "simulate_cache",
]

__version__: str

class _CacheStats(TypedDict):
    """A cache's counters (``BlobCache.stats``, ``CacheDirectory.stats``, ``simulate_cache``)."""

    hits: int
    misses: int
    evictions: int
    bytes_copied: int
    copy_seconds: float
    batches: int
    miss_rate: float

class _ChannelStats(TypedDict):
    """One DDR4 channel's counters (``dram_run``); ``finish`` in cycles."""

    reads: int
    activates: int
    precharges: int
    row_hits: int
    finish: int

class _NmpReport(TypedDict, total=False):
    """What ``nmp_emulate`` measured (``commands`` only with ``trace``)."""

    lookups: int
    cycles: int
    latency_ns: float
    dram_reads: int
    activates: int
    precharges: int
    row_hits: int
    cache_hits: int
    cache_accesses: int
    channel_bytes: int
    energy_pj: float
    batch_cycles: list[int]
    batch_latency_ns: list[float]
    batch_cache_hits: list[int]
    batch_cache_accesses: list[int]
    batch_dram_reads: list[int]
    batch_energy_pj: list[float]
    commands: list[NDArray[np.int64]]

class _BuildInfo(TypedDict):
    """How the extension was built and runs (``build_info``)."""

    version: str
    profile: str
    simd: str
    simd_available: list[str]
    threads: int
    pool: str
    pool_mode: str
    pool_library: Optional[str]
    target: str
    serial_work_bytes: int
    prefetch_distance: int

class RecengineError(Exception):
    """Every error recengine's core raises; each is also the builtin a caller expects."""

class RecengineIndexError(RecengineError, IndexError): ...
class RecengineValueError(RecengineError, ValueError): ...
class RecengineTypeError(RecengineError, TypeError): ...
class RecengineMemoryError(RecengineError, MemoryError): ...
class RecengineOSError(RecengineError, OSError): ...

@final
class Table:
    """An embedding table whose rows live in Rust memory (owned, or a read-only file mapping)."""

    @staticmethod
    def from_array(array: NDArray[np.floating], dtype: str) -> Table:
        """Encode a C-contiguous float32 or float16 array ``[num_rows, dim]`` as ``dtype``."""
    @staticmethod
    def from_raw(data: NDArray[np.uint8], dtype: str, dim: int) -> Table:
        """Copy rows already in the storage format: ``data`` is ``[num_rows, row_bytes]`` uint8."""
    @staticmethod
    def random(num_rows: int, dim: int, dtype: str, seed: int) -> Table:
        """Rows uniform in [-1, 1), encoded as ``dtype``; the same seed gives the same table."""
    @staticmethod
    def open(path: str, offset: int, num_rows: int, dim: int, dtype: str, mmap: bool = True
             ) -> Table:
        """``num_rows`` rows of ``dtype`` from ``path`` from byte ``offset`` on: mapped
        read-only when ``mmap``, else read into memory now."""
    @staticmethod
    def load_safetensors(path: str, name: Optional[str] = None, mmap: bool = True) -> Table:
        """One tensor of a safetensors file (the only one when ``name`` is None), mapped or
        read into memory as for :meth:`open`."""
    def save_safetensors(self, path: str, name: str) -> None: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> str:
        """One of ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"``."""
    @property
    def nbytes(self) -> int: ...
    @property
    def row_bytes(self) -> int: ...
    @property
    def is_mmap(self) -> bool: ...
    def lookup(
        self,
        indices: NDArray[np.integer],
        offsets: Optional[NDArray[np.integer]] = ...,
        lengths: Optional[NDArray[np.integer]] = ...,
        weights: Optional[NDArray[np.float32]] = ...,
        mode: str = ...,
        padding_idx: Optional[int] = ...,
        include_last_offset: bool = ...,
    ) -> NDArray[np.float32]: ...
    def lookup_scan(
        self,
        indices: NDArray[np.integer],
        offsets: Optional[NDArray[np.integer]] = ...,
        lengths: Optional[NDArray[np.integer]] = ...,
        weights: Optional[NDArray[np.float32]] = ...,
        mode: str = ...,
        include_last_offset: bool = ...,
    ) -> NDArray[np.float32]:
        """The lookup with the table read obliviously: every row once, in order, whatever the ids
        (bit for bit the plain lookup's output; no padding_idx)."""
    def lookup_padded(
        self,
        indices: NDArray[np.integer],
        reads: NDArray[np.integer],
        slots: NDArray[np.integer],
        offsets: Optional[NDArray[np.integer]] = ...,
        lengths: Optional[NDArray[np.integer]] = ...,
        weights: Optional[NDArray[np.float32]] = ...,
        mode: str = ...,
        include_last_offset: bool = ...,
    ) -> NDArray[np.float32]:
        """The lookup reading the rows ``reads`` in that order (the ids and dummy rows),
        ``slots[r]`` the lookup read ``r`` fills or ``len(indices)`` for a dummy (bit for bit
        the plain output)."""
    def quantize(self, dtype: str) -> Table: ...
    def slice(self, row_start: int, row_end: int, col_start: int, col_end: int) -> Table:
        """A new owned table of those rows and columns, in the same format."""
    def to_numpy(self) -> NDArray[np.float32]: ...
    def raw(self) -> NDArray[np.uint8]:
        """A copy of the stored rows, ``[num_rows, row_bytes]`` uint8."""

ORAM_BUCKET: int
ORAM_STASH_LIMIT: int

@final
class Oram:
    """A table's rows copied into a Path ORAM (buckets of ``ORAM_BUCKET`` blocks, a recursive
    position map, a stash of at most ``ORAM_STASH_LIMIT`` blocks)."""

    def __new__(cls, table: Table, seed: int) -> Oram: ...
    def lookup(
        self,
        indices: NDArray[np.integer],
        offsets: Optional[NDArray[np.integer]] = ...,
        lengths: Optional[NDArray[np.integer]] = ...,
        weights: Optional[NDArray[np.float32]] = ...,
        mode: str = ...,
        include_last_offset: bool = ...,
    ) -> NDArray[np.float32]:
        """The plain lookup's output, each row fetched through the ORAM in lookup order."""
    def record(self, on: bool) -> None:
        """Start (True) or stop (False) recording the paths lookups read."""
    def take_trace(self) -> tuple[NDArray[np.uint8], NDArray[np.uint32]]:
        """The paths read since the last call: ``(trees, leaves)``, tree 0 the rows' ORAM and
        1, 2 ... its position maps'."""
    @property
    def num_rows(self) -> int: ...
    @property
    def levels(self) -> list[int]:
        """Levels of each ORAM's tree, the rows' first."""
    @property
    def stash_max(self) -> list[int]:
        """The most blocks each ORAM's stash held after a write-back, the rows' first."""
    @property
    def nbytes(self) -> int:
        """Bytes the ORAMs hold."""

@final
class Collection:
    """Several tables pooled for one batch in one call into ``[B, sum(dims)]``."""

    def __new__(cls, tables: Sequence[Table]) -> Collection: ...
    @property
    def dims(self) -> list[int]: ...
    def lookup(
        self,
        indices: Sequence[NDArray[np.integer]],
        offsets: Optional[Sequence[NDArray[np.integer]]] = ...,
        lengths: Optional[Sequence[NDArray[np.integer]]] = ...,
        weights: Optional[Sequence[Optional[NDArray[np.float32]]]] = ...,
        mode: str = ...,
        include_last_offset: bool = ...,
    ) -> NDArray[np.float32]: ...

def pool_array(
    array: NDArray[np.generic],
    indices: NDArray[np.integer],
    offsets: Optional[NDArray[np.integer]] = ...,
    lengths: Optional[NDArray[np.integer]] = ...,
    weights: Optional[NDArray[np.float32]] = ...,
    mode: str = ...,
    padding_idx: Optional[int] = ...,
    include_last_offset: bool = ...,
    dtype: Optional[str] = None,
    dim: Optional[int] = None,
    huge_pages: bool = False,
) -> NDArray[np.float32]:
    """Pool rows of an array ``[num_rows, dim]`` without copying it: float32 or float16, or
    uint8 raw rows ``[num_rows, row_bytes]`` of storage ``dtype`` (``dim`` derived from the
    row width when not given). ``huge_pages``: the array lies on 2 MiB pages (a prefetch
    hint)."""

#: One table's pieces: ``(shard, row_start, row_end, col_start, col_end)``.
_PlanPieces = list[tuple[int, int, int, int, int]]

@final
class ShardedCollection:
    """Tables split over shards by a plan (``splits[t]``: "table", "row", "column",
    "table_row" or "replicated"; ``pieces[t]``), pooled in process with the unsharded
    collection's results."""

    def __new__(cls, tables: Sequence[Table], num_shards: int, splits: Sequence[str],
        pieces: Sequence[_PlanPieces],
    ) -> ShardedCollection: ...
    @property
    def dims(self) -> list[int]: ...
    def plan(self) -> tuple[int, list[str], list[_PlanPieces]]: ...
    def piece(self, table: int, piece: int) -> Table: ...
    def lookup(
        self,
        indices: Sequence[NDArray[np.integer]],
        offsets: Optional[Sequence[NDArray[np.integer]]] = None,
        lengths: Optional[Sequence[NDArray[np.integer]]] = None,
        weights: Optional[Sequence[Optional[NDArray[np.float32]]]] = None,
        mode: str = ...,
        include_last_offset: bool = False,
    ) -> NDArray[np.float32]: ...

@final
class Router:
    """A plan and the tables' ``(rows, dim)``, for routing batches to shards elsewhere."""

    def __new__(cls, shapes: Sequence[tuple[int, int]], num_shards: int, splits: Sequence[str],
        pieces: Sequence[_PlanPieces],
    ) -> Router: ...
    def plan(self) -> tuple[int, list[str], list[_PlanPieces]]: ...
    def route(
        self,
        indices: Sequence[NDArray[np.integer]],
        offsets: Optional[Sequence[NDArray[np.integer]]] = None,
        lengths: Optional[Sequence[NDArray[np.integer]]] = None,
        weights: Optional[Sequence[Optional[NDArray[np.float32]]]] = None,
        mode: str = ...,
        include_last_offset: bool = False,
    ) -> Routed: ...

@final
class Routed:
    """One routed batch: one share per piece with lookups."""

    def by_shard(self, router: Router) -> dict[int, list[tuple[
        int, int, NDArray[np.int64], NDArray[np.int64], Optional[NDArray[np.float32]], str]]]:
        """Each involved shard's ``(table, piece, indices, offsets, weights, mode)`` shares;
        offsets end with the share's length."""
    def merge(self, router: Router, blocks: dict[tuple[int, int], NDArray[np.float32]]
              ) -> NDArray[np.float32]:
        """The ``[B, sum(dims)]`` output from each share's pooled block."""
    def __len__(self) -> int: ...

@final
class BlobCache:
    """``slots`` slots of equal-size blobs over a store (bytes, a mapped file or a table's
    rows), evicting by a policy; see ``recengine.cache``."""

    @staticmethod
    def from_array(array: NDArray[np.uint8], slots: int, policy: str = ...,
                   wait_s: float = 30.0) -> BlobCache: ...
    @staticmethod
    def from_file(path: str, num_blobs: int, blob_bytes: int, slots: int,
                  policy: str = ..., offset: int = 0,
                  wait_s: float = 30.0) -> BlobCache: ...
    @staticmethod
    def from_table(table: Table, slots: int, policy: str = ...,
                   wait_s: float = 30.0) -> BlobCache: ...
    @property
    def num_slots(self) -> int: ...
    @property
    def blob_bytes(self) -> int: ...
    @property
    def num_blobs(self) -> int: ...
    @property
    def policy(self) -> str: ...
    def fetch(self, ids: NDArray[np.integer]) -> NDArray[np.int64]:
        """Make ids resident and pinned; each id's slot."""
    def release(self, ids: NDArray[np.integer]) -> None: ...
    def arena(self) -> NDArray[np.uint8]:
        """The slots, read-only ``[slots, blob_bytes]`` over the cache's memory."""
    def stats(self) -> _CacheStats: ...
    def contents(self) -> list[Optional[int]]: ...
    def pins(self) -> list[int]: ...
    def set_future(self, trace: Sequence[Sequence[int]]) -> None: ...

@final
class CacheDirectory:
    """The cache's bookkeeping without data, for callers that move the blobs themselves."""

    def __new__(cls, slots: int, num_ids: int, policy: str = ...) -> CacheDirectory: ...
    def acquire(self, ids: NDArray[np.integer]) -> tuple[list[int], list[tuple[int, int]]]:
        """Each id's slot, and the ``(id, slot)`` misses to copy."""
    def loaded(self, fills: Sequence[tuple[int, int]]) -> None: ...
    def release(self, ids: NDArray[np.integer]) -> None: ...
    def stats(self) -> _CacheStats: ...
    def contents(self) -> list[Optional[int]]: ...
    def set_future(self, trace: Sequence[Sequence[int]]) -> None: ...

def dram_run(addrs: NDArray[np.integer], config: Optional[dict[str, float]] = None,
             trace: bool = False) -> tuple[list[_ChannelStats], list[NDArray[np.int64]]]:
    """Emulate the DDR4 host controllers serving 64-byte line reads: per-channel counters and,
    with ``trace``, each channel's ``[n, 6]`` command trace."""

def dram_validate(trace: NDArray[np.int64], config: Optional[dict[str, float]] = None) -> None:
    """Check a channel's command trace against every timing constraint."""

def nmp_emulate(table_rows: Sequence[int], models: NDArray[np.int64], tables: NDArray[np.int64],
                rows: NDArray[np.int64], bags: NDArray[np.int64],
                config: Optional[dict[str, float]] = None,
                trace: bool = False, starts: Optional[Sequence[int]] = None) -> _NmpReport:
    """Emulate SLS lookups on the host or on RecNMP: cycles, latency_ns, DRAM commands, cache
    hits and accesses, channel bytes, energy_pj; with ``trace``, ``commands``: the DRAM
    command streams (``[n, 6]`` each), one per channel (host) or per rank (NMP). ``starts``
    splits the lookups into a stream of batches (each batch's figures in ``batch_*``)."""

def simulate_cache(policy: str, slots: int, num_ids: int,
                   trace: Sequence[Sequence[int]]) -> _CacheStats:
    """Replay a trace of batches through a cache without data."""

@final
class KeyedTables:
    """Torch weights pooled by keyed jagged ids straight from their storage. Built once; each
    call checks that the weights are still the same tensors at the same addresses and shapes,
    and returns None (reading nothing) when they are not.

    ``pool`` takes TorchRec's layout (``values`` key-major, ``lengths`` ``[num_keys * batch]``)
    and pools key ``slots[j]`` with table ``tables[j]`` into output block ``j``; it returns
    ``[batch, sum of the blocks' dims]``."""

    def __new__(cls,
        weights: Sequence[object],
        aliases: Sequence[object],
        dtypes: Sequence[str],
        modes: Sequence[str],
        huge_pages: Optional[Sequence[bool]] = None,
    ) -> KeyedTables:
        """``weights``: C-contiguous 2-D CPU tensors; ``aliases``: ``w.detach()`` of each (they
        keep the storage alive); ``dtypes``: "fp32", "fp16" or "bf16"; ``modes``: per table;
        ``huge_pages``: which weights lie on 2 MiB pages (a prefetch hint)."""
    def current(self, weights: Sequence[object]) -> bool: ...
    def pool(
        self,
        weights: Sequence[object],
        tables: Sequence[int],
        slots: Sequence[int],
        values: NDArray[np.integer],
        lengths: NDArray[np.integer],
        batch: int,
        per_value_weights: Optional[NDArray[np.float32]] = None,
    ) -> Optional[NDArray[np.float32]]: ...
    def __len__(self) -> int: ...

def pool_keyed_backward(
    grad: NDArray[np.float32],
    tables: Sequence[int],
    slots: Sequence[int],
    num_rows: Sequence[int],
    dims: Sequence[int],
    values: NDArray[np.integer],
    lengths: NDArray[np.integer],
    batch: int,
    modes: Sequence[str],
    outs: Sequence[Optional[NDArray[np.float32]]],
    weights: Optional[NDArray[np.float32]] = None,
    accumulate: Optional[Sequence[str]] = None,
) -> list[Optional[tuple[NDArray[np.int64], NDArray[np.float32]]]]:
    """The backward of :meth:`KeyedTables.pool`: block ``j`` adds into ``outs[tables[j]]`` (dense)
    when given, else its entry is the block's sparse gradient ``(rows, values)``.
    ``accumulate``: per table, the dtype ("fp32", "fp16", "bf16") whose precision the sums
    keep, as :func:`pool_backward`'s."""

def pool_backward(
    grad: NDArray[np.float32],
    num_rows: int,
    indices: NDArray[np.integer],
    offsets: Optional[NDArray[np.integer]] = None,
    lengths: Optional[NDArray[np.integer]] = None,
    weights: Optional[NDArray[np.float32]] = None,
    mode: str = ...,
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
    out: Optional[NDArray[np.float32]] = None,
    accumulate: str = ...,
) -> Optional[tuple[NDArray[np.int64], NDArray[np.float32]]]:
    """The table's gradient from the pooled output's ``grad`` ``[B, D]`` (sum or mean mode):
    added into ``out`` ``[num_rows, D]`` when given (returns None), else the sparse gradient
    ``(rows [K], values [K, D])``: each non-padding lookup's row and scaled gradient.
    ``accumulate`` "fp16" or "bf16" computes it as torch's CPU backward does for a table of
    that dtype: factors rounded to it, and the dense sums rounded to it after each addition."""

def safetensors_names(path: str) -> list[str]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_thread_pool(mode: str) -> None: ...
def prefetch_distance(distance: Optional[int] = None) -> int: ...
def get_thread_pool() -> tuple[str, str, Optional[str]]: ...
def simd_level() -> str: ...
def available_simd_levels() -> list[str]: ...
def set_simd_level(level: Optional[str] = ...) -> None:
    """Force a SIMD level (``"avx512"``, ``"avx2"``, ``"scalar"``) or None for the best one."""

def build_info() -> _BuildInfo: ...
def gather_probe(table: Table, indices: NDArray[np.int64], repeats: int = ...) -> float:
    """Best seconds over ``repeats`` passes of a plain gather (read every byte) of the rows."""

def row_bytes(dtype: str, dim: int) -> int:
    """Bytes one row of ``dim`` values takes in storage format ``dtype``."""

def dram_defaults() -> dict[str, Any]:
    """Every setting of the DDR4 model and its default."""

def nmp_defaults() -> dict[str, Any]:
    """The RecNMP emulator's own settings (not the DRAM ones) and their defaults."""
