"""``emulate``: SparseLengthsSum traces on a DDR4 host or on RecNMP's near-memory units.

:class:`NMPConfig` is the emulated system (the DDR4 organisation and timing of
:class:`~recengine.nmp.dram.DramConfig`, the NMP switches and the energy costs); presets
``"ddr4-baseline"`` (SLS on the host) and ``"recnmp"`` (the paper's configuration: 4 channels
of 4 DIMMs x 2 ranks, NMP on, 128 KiB RankCache per rank, 4-way, hot-entry profiling with
threshold 2, table-aware scheduling), and both on 2 DIMMs x 2 ranks a channel (``"-2x2"``).
The DRAM is timed by the fast mode unless ``timing="command"`` (:data:`TIMINGS`).
:class:`Trace` is a list of lookups (model, table, row, bag) over tables of given row counts;
:func:`emulate` returns latency, throughput, energy and cache figures. See
``rust/core/src/nmp.rs`` and ``rust/core/src/dram_fast.rs`` for the model.

Example::

    >>> from recengine.nmp import NMPConfig, Trace, emulate
    >>> trace = Trace.synthetic(tables=[100_000] * 4, bags=64, pooling=40, seed=0)
    >>> host = emulate(trace, NMPConfig.preset("ddr4-baseline"))
    >>> nmp = emulate(trace, NMPConfig.preset("recnmp"))
    >>> nmp.latency_ns < host.latency_ns
    True
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import _core
from .._files import regular_file
from ..rows import draw_rows
from ..shapes import model_bytes, model_tables
from .dram import DramConfig

__all__ = ["NMP_DEFAULTS", "PAPER_DIMMS", "PRESETS", "TECHNOLOGIES", "TIMINGS",
           "EmulationResult", "NMPConfig", "NMPDevice", "Trace", "emulate", "model_vector_bytes",
           "rank_dram_config"]

#: Named configurations of :meth:`NMPConfig.preset`: the paper's memory system (4 channels of
#: 4 DIMMs x 2 ranks, 8-way rank-level parallelism) with SLS on the host or on RecNMP, and the
#: same on a smaller system of 2 DIMMs x 2 ranks a channel (``DramConfig``'s default).
PRESETS: tuple[str, ...] = ("ddr4-baseline", "recnmp", "ddr4-baseline-2x2", "recnmp-2x2")

#: The paper's channel: 4 DIMMs of 2 ranks.
PAPER_DIMMS = (4, 2)

#: DRAM timing models: ``"fast"`` (a decision per embedding vector, ``dram_fast.rs``; within
#: 3% of the command model on the ``recengine nmp`` sweep) and ``"command"`` (every ACT, RD and
#: PRE scheduled FR-FCFS: the reference, and the only one that gives command streams).
TIMINGS: tuple[str, ...] = ("fast", "command")

#: RankCache memory technologies: read and write energy (pJ) of a 64-bit access of a 2 MB
#: array at 22 nm (NVMExplorer's table); a 64-byte line costs 8 accesses.
TECHNOLOGIES: dict[str, tuple[float, float]] = {
    "sram": (1.128, 17.02),
    "stt-mram-optimistic": (4.37, 43.5),
    "stt-mram-pessimistic": (7.45, 295.0),
    "rram-optimistic": (6.18, 49.7),
    "pcm-optimistic": (5.52, 6.48),
    "pcm-pessimistic": (5.78, 1.92e6),
}


#: The emulator's settings and their defaults, as the core defines them (``NmpConfig`` in
#: ``rust/core/src/nmp.rs``); its energy figures are overridden through ``NMPConfig.energy``.
NMP_DEFAULTS: dict[str, Any] = dict(_core.nmp_defaults())


@dataclass(frozen=True)
class NMPConfig:
    """The emulated memory system and where SLS runs (see the module's note)."""

    dram: DramConfig = field(default_factory=DramConfig)
    nmp: bool = NMP_DEFAULTS["nmp"]
    vector_bytes: int = NMP_DEFAULTS["vector_bytes"]
    instr_per_packet: int = NMP_DEFAULTS["instr_per_packet"]
    cache_bytes: int = NMP_DEFAULTS["cache_bytes"]
    cache_ways: int = NMP_DEFAULTS["cache_ways"]
    hot_threshold: int = NMP_DEFAULTS["hot_threshold"]
    table_aware: bool = NMP_DEFAULTS["table_aware"]
    cache_hit_cycles: int = NMP_DEFAULTS["cache_hit_cycles"]
    cache_technology: str = "sram"
    energy: Optional[dict[str, float]] = None
    #: The DRAM timing model (:data:`TIMINGS`).
    timing: str = "fast" if NMP_DEFAULTS["fast"] else "command"

    def __post_init__(self) -> None:
        if self.timing not in TIMINGS:
            raise ValueError(f"unknown timing {self.timing!r}; expected one of "
                             f"{', '.join(TIMINGS)}")
        if self.cache_technology not in TECHNOLOGIES:
            raise ValueError(f"unknown memory technology {self.cache_technology!r}; expected "
                             f"one of {', '.join(TECHNOLOGIES)}")

    @classmethod
    def preset(cls, name: str, **changes: Any) -> NMPConfig:
        """One of :data:`PRESETS`, with ``changes`` applied: ``"recnmp"`` is RecNMP on the
        paper's memory system (4 DIMMs x 2 ranks a channel), ``"ddr4-baseline"`` the host on
        the same memory; the ``"-2x2"`` ones use 2 DIMMs x 2 ranks a channel."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        dimms, ranks = (2, 2) if name.endswith("-2x2") else PAPER_DIMMS
        dram = DramConfig(dimms_per_channel=dimms, ranks_per_dimm=ranks)
        if name.startswith("ddr4-baseline"):
            base = cls(dram=dram, nmp=False, cache_bytes=0, hot_threshold=0, table_aware=False)
        else:
            base = cls(dram=dram)
        return replace(base, **changes)

    def host(self) -> NMPConfig:
        """The DDR4 host (``"ddr4-baseline"``) on this configuration's memory system, vector
        size and timing: what RecNMP is compared against."""
        return NMPConfig.preset("ddr4-baseline", dram=self.dram, vector_bytes=self.vector_bytes,
                                timing=self.timing)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items()
             if k not in ("dram", "energy", "cache_technology", "timing")}
        d["fast"] = self.timing == "fast"
        d.update(self.dram.as_dict())
        read, write = TECHNOLOGIES[self.cache_technology]
        d.update(cache_read_pj=8 * read, cache_write_pj=8 * write)
        d.update(self.energy or {})
        return d


def model_vector_bytes(model: str) -> int:
    """Bytes of one fp32 embedding vector of a DeepRecInfra model (its widest table's).

    Example::

        >>> model_vector_bytes("rmc1"), model_vector_bytes("rmc2")
        (128, 256)
    """
    return 4 * max(s.dim for s in model_tables(model))


#: The most tables a trace may number (ids ``0..MAX_TABLES-1``).
MAX_TABLES = 1 << 20


@dataclass
class Trace:
    """Lookups over tables: ``table_rows[t]`` rows in table ``t``; per lookup its model,
    table, row and bag (int64 arrays of one length).

    A trace is one batch, or a **stream** of batches when ``starts`` (int64, ``[batches]``)
    gives the index of each batch's first lookup (``starts[0] == 0``, never decreasing): the
    emulator runs the batches one after another, profiles hot entries within each batch and
    keeps the RankCaches warm from one batch to the next.

    Example::

        >>> s = Trace.from_model("rmc1", batch=16, batches=4, table_mb=8)
        >>> s.num_batches, len(s.batch(0)) == len(s) // 4
        (4, True)
    """

    table_rows: list[int]
    models: np.ndarray
    tables: np.ndarray
    rows: np.ndarray
    bags: np.ndarray
    starts: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        cols = {k: getattr(self, k) for k in ("models", "tables", "rows", "bags")}
        for k, c in cols.items():
            c = np.asarray(c)
            if c.ndim != 1 or (c.size and c.dtype.kind not in "iu"):
                raise ValueError(f"Trace.{k} must be a 1-D integer array, got {c.dtype} {c.shape}")
            setattr(self, k, c.astype(np.int64, copy=False))
        if len({c.size for c in cols.values()}) > 1:
            raise ValueError("Trace columns differ in length: "
                             + ", ".join(f"{k} {np.size(c)}" for k, c in cols.items()))
        if self.tables.size and int(self.tables.max()) >= len(self.table_rows):
            raise ValueError(f"the trace names table {int(self.tables.max())} but table_rows "
                             f"sizes {len(self.table_rows)} tables")
        if self.starts is not None:
            s = np.asarray(self.starts)
            if s.ndim != 1 or s.size == 0 or (s.dtype.kind not in "iu"):
                raise ValueError(f"Trace.starts must be a non-empty 1-D integer array, got "
                                 f"{s.dtype} {s.shape}")
            s = s.astype(np.int64, copy=False)
            if s[0] != 0 or np.any(np.diff(s) < 0) or s[-1] > len(self):
                raise ValueError(f"Trace.starts must begin with 0, never decrease and stay "
                                 f"within the {len(self)} lookups")
            self.starts = s

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def num_batches(self) -> int:
        """How many batches the trace holds (1 unless it is a stream)."""
        return 1 if self.starts is None else int(self.starts.size)

    def batch(self, i: int) -> Trace:
        """Batch ``i`` of the stream, as a trace of its own (the whole trace for a batch)."""
        if not -self.num_batches <= i < self.num_batches:
            raise IndexError(f"batch {i} of a trace of {self.num_batches}")
        if self.starts is None:
            return self
        i %= self.num_batches
        lo = int(self.starts[i])
        hi = int(self.starts[i + 1]) if i + 1 < self.starts.size else len(self)
        return Trace(list(self.table_rows), self.models[lo:hi], self.tables[lo:hi],
                     self.rows[lo:hi], self.bags[lo:hi])

    def take(self, keep: np.ndarray) -> Trace:
        """The lookups where ``keep`` (bool, ``[len(self)]``) is set, batches kept."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep must be a bool array of {len(self)} entries, got "
                             f"{keep.shape}")
        starts = None
        if self.starts is not None:
            starts = np.concatenate([[0], np.cumsum(keep)])[self.starts].astype(np.int64)
        return Trace(list(self.table_rows), self.models[keep], self.tables[keep],
                     self.rows[keep], self.bags[keep], starts)

    @classmethod
    def stream(cls, batches: Sequence[Trace]) -> Trace:
        """The traces in ``batches`` (over the same tables) as one stream, in that order."""
        if not batches:
            raise ValueError("a stream needs at least one batch")
        rows = list(batches[0].table_rows)
        if any(list(b.table_rows) != rows for b in batches):
            raise ValueError("every batch of a stream must be over the same tables")
        sizes = [len(b) for b in batches]
        cols = [np.concatenate([getattr(b, k) for b in batches])
                for k in ("models", "tables", "rows", "bags")]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls(rows, *cols, starts=starts)

    @classmethod
    def from_lookups(cls, table_rows: Sequence[int], indices: Sequence[Any],
                     lengths: Sequence[Any], model: int = 0) -> Trace:
        """One batch of recengine lookups: ``indices[t]`` pooled in bags of ``lengths[t]``
        (bag ``b`` of every table is sample ``b``)."""
        tabs, rows, bags = [], [], []
        for t, (idx, lens) in enumerate(zip(indices, lengths)):
            idx = np.asarray(idx, dtype=np.int64)
            lens = np.asarray(lens, dtype=np.int64)
            if lens.sum() != idx.size:
                raise ValueError(f"table {t}: lengths sum to {lens.sum()}, not {idx.size}")
            tabs.append(np.full(idx.size, t, dtype=np.int64))
            rows.append(idx)
            bags.append(np.repeat(np.arange(lens.size, dtype=np.int64), lens))
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return cls(list(table_rows), np.full(r.size, model, dtype=np.int64),
                   np.concatenate(tabs) if tabs else r.copy(), r,
                   np.concatenate(bags) if bags else r.copy())

    @classmethod
    def synthetic(cls, tables: Sequence[int], bags: int, pooling: Union[int, Sequence[int]],
                  zipf: float = 0.0, models: int = 1, seed: int = 0,
                  distribution: str = "zipf", batches: int = 1) -> Trace:
        """``models`` co-located models, each looking up ``bags`` bags of ``pooling`` rows in
        every table (one pooling factor for all, or one per table). Rows follow
        ``distribution`` (:data:`recengine.rows.DISTRIBUTIONS`) with parameter ``zipf``: the
        Zipf exponent (``0``: uniform) or the Pareto shape; ``"production"`` has its own.
        Models' lookups interleave round-robin. With ``batches`` > 1, a stream of that many
        batches of ``bags`` bags each, drawn from one distribution (the same hot rows in every
        batch); bag ids run on across the stream."""
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        per_table = [pooling] * len(tables) if isinstance(pooling, int) else list(pooling)
        if len(per_table) != len(tables):
            raise ValueError(f"{len(per_table)} pooling factors for {len(tables)} tables")
        if bags < 0 or models < 1 or any(p < 0 for p in per_table):
            raise ValueError("bags and pooling factors must be >= 0 and models >= 1")
        rng = np.random.default_rng(seed)
        # One draw per model and table for the whole stream (one ranking of hot rows); batch
        # j takes the j-th block of each draw, and every batch interleaves its parts alike.
        parts = []
        for m in range(models):
            for t, (n, p) in enumerate(zip(tables, per_table)):
                k = bags * p
                rows = draw_rows(rng, n, k * batches, distribution, zipf)
                parts.append((m, t, p, rows.reshape(batches, k)))
        if not parts:
            return cls(list(tables), *(np.zeros(0, np.int64) for _ in range(4)))
        order = np.argsort(np.concatenate([np.arange(bags * p) for _, _, p, _ in parts]),
                           kind="stable")
        one = [np.concatenate(c)[order] for c in zip(*[
            (np.full(bags * p, m), np.full(bags * p, t), np.repeat(np.arange(bags), p))
            for m, t, p, _ in parts])]
        width = order.size
        rows = np.concatenate([r for _, _, _, r in parts], axis=1)[:, order].reshape(-1)
        bag_ids = (one[2][None, :] + bags * np.arange(batches)[:, None]).reshape(-1)
        starts = None if batches == 1 else np.arange(batches, dtype=np.int64) * width
        return cls(list(tables), np.tile(one[0], batches), np.tile(one[1], batches),
                   rows.astype(np.int64, copy=False), bag_ids, starts)

    @classmethod
    def from_model(cls, model: str, batch: int, distribution: str = "zipf", alpha: float = 1.0,
                   table_mb: Optional[float] = None, models: int = 1, seed: int = 0,
                   batches: int = 1) -> Trace:
        """One batch of ``batch`` samples of a DeepRecInfra model (``"rmc1"``, ``"wnd"``, ...): its
        tables and pooling factors, scaled down to ``table_mb`` MiB of tables when given; or a
        stream of ``batches`` such batches. Rows as :meth:`synthetic` (``alpha``: its ``zipf``
        parameter)."""
        scale = 1.0 if table_mb is None else min(1.0, table_mb * 2**20 / model_bytes(model))
        specs = model_tables(model, scale)
        return cls.synthetic([s.num_rows for s in specs], batch, [s.lookups for s in specs],
                             alpha, models, seed, distribution, batches)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the trace to ``path`` (``.npz``; :meth:`load` reads it back)."""
        extra = {} if self.starts is None else {"starts": self.starts}
        np.savez_compressed(path, table_rows=np.asarray(self.table_rows, dtype=np.int64),
                            models=self.models, tables=self.tables, rows=self.rows,
                            bags=self.bags, **extra)

    @classmethod
    def load(cls, path: Union[str, os.PathLike],
             table_rows: Optional[Sequence[int]] = None) -> Trace:
        """Read a trace: a ``.npz`` written by :meth:`save`, or a text file (CSV or
        whitespace-separated) with a header naming columns ``table``, ``row`` and optionally
        ``bag`` (default: 0), ``model`` (default: 0) and ``batch`` (a stream: batch ids that
        never decrease down the file), one lookup per line. ``table_rows`` (default: the
        file's, else each table's largest row + 1) sizes the tables."""
        path = regular_file(path)
        rows: Optional[list[int]] = list(table_rows) if table_rows is not None else None
        starts: Optional[np.ndarray] = None
        if path.endswith(".npz"):
            with np.load(path) as z:
                missing = {"models", "tables", "rows", "bags"} - set(z.files)
                if missing:
                    raise ValueError(f"{path}: not a trace file (no {', '.join(sorted(missing))})")
                cols = [np.asarray(z[k], dtype=np.int64)
                        for k in ("models", "tables", "rows", "bags")]
                if rows is None and "table_rows" in z.files:
                    rows = [int(x) for x in z["table_rows"]]
                if "starts" in z.files:
                    starts = np.asarray(z["starts"])
        else:
            cols, batch = _read_text_trace(path)
            if batch is not None:
                if batch.size and np.any(np.diff(batch) < 0):
                    raise ValueError(f"{path}: the batch column must never decrease (a stream's "
                                     f"batches one after another)")
                starts = np.flatnonzero(np.diff(batch, prepend=-1)).astype(np.int64)
                if starts.size == 0:
                    starts = np.zeros(1, np.int64)
        if any(c.size and c.min() < 0 for c in cols):
            raise ValueError(f"{path}: negative model, table, row or bag")
        num_tables = int(cols[1].max()) + 1 if cols[1].size else 0
        if num_tables > MAX_TABLES:
            raise ValueError(f"{path}: table ids go up to {num_tables - 1}; a trace numbers its "
                             f"tables 0..T-1 with T at most {MAX_TABLES} (renumber them)")
        if rows is None:
            sizes = np.ones(num_tables, np.int64)
            np.maximum.at(sizes, cols[1], cols[2] + 1)
            rows = [int(n) for n in sizes]
        try:
            return cls(rows, *cols, starts=starts)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _read_text_trace(path: str) -> tuple[list[np.ndarray], Optional[np.ndarray]]:
    """Columns model, table, row, bag of a text trace, and its batch column if it has one
    (see :meth:`Trace.load`)."""
    with open(path) as f:
        header = f.readline()
    sep = "," if "," in header else None
    names = [h.strip().lower() for h in header.split(sep)]
    if "table" not in names or "row" not in names:
        raise ValueError(f"{path}: the header must name columns 'table' and 'row', "
                         f"got {header.strip()!r}")
    data = np.loadtxt(path, delimiter=sep, skiprows=1, dtype=np.int64, ndmin=2)
    n = data.shape[0] if data.size else 0
    if n and data.shape[1] != len(names):
        raise ValueError(f"{path}: {data.shape[1]} columns but {len(names)} names")
    cols = [data[:, names.index(c)].copy() if c in names and n else np.zeros(n, np.int64)
            for c in ("model", "table", "row", "bag", "batch")]
    return cols[:4], cols[4] if "batch" in names else None


@dataclass
class EmulationResult:
    """What :func:`emulate` measured (``raw``: every counter of the core). For a stream the
    totals cover every batch (latency: the batches back to back) and the ``batch_*``
    properties give each batch's figures (arrays of ``[batches]``)."""

    config: NMPConfig
    raw: dict[str, Any]
    #: With ``emulate(..., commands=True)``: the DRAM command streams (``[n, 6]``: cycle,
    #: kind 0/1/2 = ACT/RD/PRE, rank, bank group, bank, row), one per channel on the host, one
    #: per rank with NMP (each a one-rank channel: check it with :func:`rank_dram_config`).
    commands: list[np.ndarray] = field(default_factory=list)

    @property
    def latency_ns(self) -> float:
        return float(self.raw["latency_ns"])

    @property
    def throughput(self) -> float:
        """Lookups per second."""
        return self.raw["lookups"] / max(self.latency_ns, 1e-9) * 1e9

    @property
    def energy_nj(self) -> float:
        return float(self.raw["energy_pj"]) / 1e3

    @property
    def cache_hit_rate(self) -> float:
        return self.raw["cache_hits"] / max(self.raw["cache_accesses"], 1)

    @property
    def batch_latency_ns(self) -> np.ndarray:
        """Each batch's memory latency (ns)."""
        return np.asarray(self.raw["batch_latency_ns"], dtype=np.float64)

    @property
    def batch_energy_nj(self) -> np.ndarray:
        """Each batch's memory energy (nJ)."""
        return np.asarray(self.raw["batch_energy_pj"], dtype=np.float64) / 1e3

    @property
    def batch_cache_hit_rate(self) -> np.ndarray:
        """Each batch's RankCache hit rate (0 where a batch made no cache access)."""
        hits = np.asarray(self.raw["batch_cache_hits"], dtype=np.float64)
        return hits / np.maximum(np.asarray(self.raw["batch_cache_accesses"]), 1)


def emulate(trace: Trace, config: Optional[NMPConfig] = None,
            commands: bool = False) -> EmulationResult:
    """Emulate ``trace`` on ``config`` (default: the ``"recnmp"`` preset); with ``commands``,
    keep the DRAM command streams (:attr:`EmulationResult.commands`; they come from the
    command model, ``config.timing == "command"``, for a trace of one batch). A stream
    (:attr:`Trace.starts`) runs batch after batch with the RankCaches kept warm."""
    config = config or NMPConfig.preset("recnmp")
    if commands and config.timing != "command":
        raise ValueError("command streams come from the command model: emulate with "
                         "replace(config, timing='command')")
    if commands and trace.num_batches > 1:
        raise ValueError(f"command streams are kept for one batch; this trace is a stream of "
                         f"{trace.num_batches} (emulate trace.batch(i))")
    raw = dict(_core.nmp_emulate([int(r) for r in trace.table_rows],
                                 *(np.ascontiguousarray(a, dtype=np.int64) for a in
                                   (trace.models, trace.tables, trace.rows, trace.bags)),
                                 config.as_dict(), commands,
                                 None if trace.starts is None else trace.starts.tolist()))
    streams = list(raw.pop("commands", []))
    return EmulationResult(config, raw, streams)


def rank_dram_config(config: NMPConfig) -> DramConfig:
    """The DRAM organisation a Rank-NMP unit's command stream runs on: one channel of one
    rank, with ``config``'s banks and timing (for :func:`recengine.nmp.validate`)."""
    return replace(config.dram, channels=1, dimms_per_channel=1, ranks_per_dimm=1)


class NMPDevice:
    """Runs ``EmbeddingTable`` lookups "on NMP": the output is the CPU kernel's (the pooling is
    done by recengine's kernel), and each call's lookups are emulated on ``config`` to
    account time and energy (:attr:`elapsed_ns`, :attr:`energy_nj`, :attr:`calls`).

    Example::

        >>> import numpy as np, recengine
        >>> dev = NMPDevice(NMPConfig.preset("recnmp"))
        >>> t = recengine.EmbeddingTable.random(1000, 32)
        >>> out = dev.lookup(t, np.array([1, 2, 3]), lengths=np.array([2, 1]))
        >>> out.shape, dev.calls
        ((2, 32), 1)
    """

    def __init__(self, config: Optional[NMPConfig] = None) -> None:
        self.config = config or NMPConfig.preset("recnmp")
        self.elapsed_ns = 0.0
        self.energy_nj = 0.0
        self.calls = 0

    def lookup(self, table: Any, indices: Any, lengths: Any, weights: Any = None,
               mode: str = "sum") -> np.ndarray:
        """Pool ``table`` rows ``indices`` in bags of ``lengths`` (as ``table.lookup``)."""
        out = table.lookup(indices, lengths=lengths, weights=weights, mode=mode)
        trace = Trace.from_lookups([table.num_rows], [indices], [lengths])
        res = emulate(trace, replace(self.config, vector_bytes=table.row_bytes))
        self.elapsed_ns += res.latency_ns
        self.energy_nj += res.energy_nj
        self.calls += 1
        return out
