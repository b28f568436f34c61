"""``emulate``: SparseLengthsSum traces on a DDR4 host or on RecNMP's near-memory units.

:class:`NMPConfig` is the emulated system (the DDR4 organisation and timing of
:class:`~recengine.nmp.dram.DramConfig`, the NMP switches and the energy costs); presets
``"ddr4-baseline"`` (SLS on the host) and ``"recnmp"`` (the paper's configuration: NMP on,
128 KiB RankCache per rank, 4-way, hot-entry profiling with threshold 2, table-aware
scheduling). :class:`Trace` is a list of lookups (model, table, row, bag) over tables of given
row counts; :func:`emulate` returns latency, throughput, energy and cache figures. See
``rust/core/src/nmp.rs`` for the model.

Example::

    >>> from recengine.nmp import NMPConfig, Trace, emulate
    >>> trace = Trace.synthetic(tables=[100_000] * 4, bags=64, pooling=40, seed=0)
    >>> host = emulate(trace, NMPConfig.preset("ddr4-baseline"))
    >>> nmp = emulate(trace, NMPConfig.preset("recnmp"))
    >>> nmp.latency_ns < host.latency_ns
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import _core
from .dram import DramConfig

__all__ = ["PRESETS", "TECHNOLOGIES", "EmulationResult", "NMPConfig", "NMPDevice", "Trace",
           "emulate", "zipf_rows"]

#: Named configurations of :meth:`NMPConfig.preset`.
PRESETS: tuple[str, ...] = ("ddr4-baseline", "recnmp")

#: RankCache memory technologies: read and write energy (pJ) of a 64-bit access of a 2 MB
#: array at 22 nm (R8's table, NVMExplorer); a 64-byte line costs 8 accesses.
TECHNOLOGIES: dict[str, tuple[float, float]] = {
    "sram": (1.128, 17.02),
    "stt-mram-optimistic": (4.37, 43.5),
    "stt-mram-pessimistic": (7.45, 295.0),
    "rram-optimistic": (6.18, 49.7),
    "pcm-optimistic": (5.52, 6.48),
    "pcm-pessimistic": (5.78, 1.92e6),
}


@dataclass(frozen=True)
class NMPConfig:
    """The emulated memory system and where SLS runs (see the module's note)."""

    dram: DramConfig = field(default_factory=DramConfig)
    nmp: bool = True
    vector_bytes: int = 128
    instr_per_packet: int = 8
    cache_bytes: int = 128 * 1024
    cache_ways: int = 4
    hot_threshold: int = 2
    table_aware: bool = True
    cache_hit_cycles: int = 2
    cache_technology: str = "sram"
    energy: Optional[dict[str, float]] = None

    def __post_init__(self) -> None:
        if self.cache_technology not in TECHNOLOGIES:
            raise ValueError(f"unknown memory technology {self.cache_technology!r}; expected "
                             f"one of {', '.join(TECHNOLOGIES)}")

    @classmethod
    def preset(cls, name: str, **changes: Any) -> NMPConfig:
        """``"ddr4-baseline"`` or ``"recnmp"``, with ``changes`` applied."""
        if name == "ddr4-baseline":
            base = cls(nmp=False, cache_bytes=0, hot_threshold=0, table_aware=False)
        elif name == "recnmp":
            base = cls()
        else:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        return replace(base, **changes)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items()
             if k not in ("dram", "energy", "cache_technology")}
        d.update(self.dram.as_dict())
        read, write = TECHNOLOGIES[self.cache_technology]
        d.update(cache_read_pj=8 * read, cache_write_pj=8 * write)
        d.update(self.energy or {})
        return d


@dataclass
class Trace:
    """Lookups over tables: ``table_rows[t]`` rows in table ``t``; per lookup its model,
    table, row and bag (int64 arrays of one length)."""

    table_rows: list[int]
    models: np.ndarray
    tables: np.ndarray
    rows: np.ndarray
    bags: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.size)

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
                  zipf: float = 0.0, models: int = 1, seed: int = 0) -> Trace:
        """``models`` co-located models, each looking up ``bags`` bags of ``pooling`` rows in
        every table (one pooling factor for all, or one per table); rows uniform (``zipf=0``)
        or following a Zipf law of exponent ``zipf`` over the table's rows
        (:func:`zipf_rows`). Models' lookups interleave round-robin."""
        per_table = [pooling] * len(tables) if isinstance(pooling, int) else list(pooling)
        if len(per_table) != len(tables):
            raise ValueError(f"{len(per_table)} pooling factors for {len(tables)} tables")
        rng = np.random.default_rng(seed)
        parts = []
        for m in range(models):
            for t, (n, p) in enumerate(zip(tables, per_table)):
                k = bags * p
                rows = zipf_rows(rng, n, zipf, k)
                parts.append((np.full(k, m), np.full(k, t), rows,
                              np.repeat(np.arange(bags), p)))
        order = np.argsort(np.concatenate([np.arange(p[2].size) for p in parts]), kind="stable")
        cols = [np.concatenate([p[i] for p in parts])[order].astype(np.int64) for i in range(4)]
        return cls(list(tables), *cols)


def zipf_rows(rng: np.random.Generator, n: int, s: float, k: int) -> np.ndarray:
    """``k`` rows of a table of ``n``: uniform for ``s == 0``, else a bounded Zipf law,
    ``P(rank r) ~ 1 / r**s`` for ranks 1..n, the ranking a random permutation of the rows.
    (With s = 1 over a million rows, the 64 hottest rows take a third of the lookups.)"""
    if s <= 0:
        return rng.integers(0, n, k)
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
    ranks = np.searchsorted(cdf, rng.random(k) * cdf[-1])
    return rng.permutation(n)[np.minimum(ranks, n - 1)]


@dataclass
class EmulationResult:
    """What :func:`emulate` measured (``raw``: every counter of the core)."""

    config: NMPConfig
    raw: dict[str, float]

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


def emulate(trace: Trace, config: Optional[NMPConfig] = None) -> EmulationResult:
    """Emulate ``trace`` on ``config`` (default: the ``"recnmp"`` preset)."""
    config = config or NMPConfig.preset("recnmp")
    raw = _core.nmp_emulate([int(r) for r in trace.table_rows],
                            *(np.ascontiguousarray(a, dtype=np.int64) for a in
                              (trace.models, trace.tables, trace.rows, trace.bags)),
                            config.as_dict())
    return EmulationResult(config, dict(raw))


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
