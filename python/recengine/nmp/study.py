"""The RecNMP study behind ``recengine nmp``: host vs near-memory SLS over one model's tables.

Each row emulates the same kind of trace twice, once on the DDR4 host (``"ddr4-baseline"``)
and once on RecNMP, with one setting changed from the ``system`` it starts from: by default
the paper's configuration (the ``"recnmp"`` preset: 4 channels of 4 DIMMs x 2 ranks, 128 KiB
4-way RankCache per rank, hot-entry profiling with threshold 2, table-aware scheduling), or
``"recnmp-2x2"`` (2 DIMMs x 2 ranks a channel). The DRAM is timed by ``timing``: the fast
mode by default (within 3% of the command model on this sweep: ``benches/nmp_speed.py``), or
``"command"``, the per-command reference. Every row names both. It reports:

* ``latency_speedup``: host memory latency / RecNMP memory latency for the trace;
* ``throughput_speedup``: the end-to-end speedup of a model whose SLS takes ``sls_fraction``
  of its time on the host (Amdahl: ``1 / ((1 - f) + f / latency_speedup)``; the default f
  is 0.79, the share of inference cycles the scale-out inference study (arXiv 2011.02084)
  reports recommendation models can take);
* ``energy_saving``: 1 - RecNMP energy / host energy.

Every trace is a **stream** of ``batches`` batches of ``batch`` samples (default 8 of 64): the
emulator runs them one after another, profiles hot entries within each batch (as the host
does before it sends a batch) and keeps each rank's RankCache warm from batch to batch. The
figures cover the whole stream; ``cold_hit_rate`` and ``warm_hit_rate`` are the first and
the last batch's RankCache hit rates.

Sweeps, one setting at a time: ranks per channel (1-8); RankCache size (0-1 MiB); locality
(the exponent of a bounded Zipf law over each table's rows, 0 = uniform, default 1.0);
co-located models (1-8, their lookups interleaved); table-aware scheduling and hot-entry
profiling off; the eight DeepRecInfra models (``models``); and three inputs behind the gaps
to the paper's headline figures: the vector size (``vector``: 64-256 bytes), the energy
account's DRAM background power (charged for the time taken) and channel I/O energy per bit
(``energy``: the defaults, each lowered, then neither background power nor RankCache), and the
share of inference time in SLS that turns the latency speedup into throughput
(``sls_fraction``: no new emulation, the base row's speedup through Amdahl's law). Traces:
``batch`` samples of the model's tables (DeepRecInfra shapes scaled to ``table_mb``) with their
pooling factors, rows from ``distribution`` (uniform, Zipf, Pareto or production-like), or a
trace file.

Example::

    >>> rows = run_study(NMPStudyConfig(model="ncf", batch=8, batches=2, sweeps=("ranks",),
    ...                                 table_mb=4))
    >>> sorted(r["ranks"] for r in rows)
    [1, 2, 4, 8]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from ..rows import DISTRIBUTIONS
from ..shapes import model_names, resolve_model
from .dram import DramConfig
from .emulator import TIMINGS, NMPConfig, Trace, emulate, model_vector_bytes

__all__ = ["SWEEPS", "SYSTEMS", "Config", "NMPStudyConfig", "iter_study", "plot_study", "run_study",
           "summarize_study"]

#: What the study can vary (one at a time, the rest at the paper's configuration).
SWEEPS: tuple[str, ...] = ("ranks", "cache", "locality", "colocation", "scheduling",
                           "profiling", "models", "vector", "energy", "sls_fraction")
_RANKS = {1: (1, 1), 2: (1, 2), 4: (2, 2), 8: (4, 2)}  # ranks per channel: (DIMMs, ranks each)
#: The memory systems a study can start from (presets of :meth:`NMPConfig.preset`).
SYSTEMS: tuple[str, ...] = ("recnmp", "recnmp-2x2")


@dataclass
class NMPStudyConfig:
    """What :func:`run_study` emulates (see the module's note)."""

    model: str = "rmc1"
    batch: int = 64
    #: Batches in each trace's stream (RankCaches stay warm across them).
    batches: int = 8
    table_mb: float = 256.0
    zipf: float = 1.0
    #: Row distribution of the model's traces (:data:`recengine.rows.DISTRIBUTIONS`; ``zipf``
    #: is its parameter).
    distribution: str = "zipf"
    #: A trace file (:meth:`Trace.load`) to emulate instead of the model's batch; the locality
    #: and co-location sweeps, which make their own traces, are then left out.
    trace: Optional[str] = None
    sls_fraction: float = 0.79
    sweeps: Sequence[str] = SWEEPS
    preset_only: bool = False
    seed: int = 0
    #: The configuration every row changes one setting of (:data:`SYSTEMS`).
    system: str = "recnmp"
    #: The DRAM timing model (:data:`recengine.nmp.TIMINGS`).
    timing: str = "fast"
    #: Bytes of an embedding vector (default: the model's fp32 rows; 128 for a trace file).
    vector_bytes: Optional[int] = None

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)
        for s in self.sweeps:
            if s not in SWEEPS:
                raise ValueError(f"unknown sweep {s!r}; expected some of {', '.join(SWEEPS)}")
        if self.batches < 1:
            raise ValueError(f"batches must be >= 1, got {self.batches}")
        if self.batch < 1 or not (self.table_mb > 0 and math.isfinite(self.table_mb)) \
                or not (self.zipf >= 0 and math.isfinite(self.zipf)):
            raise ValueError(f"batch must be >= 1, table_mb > 0 and zipf a finite number >= 0 "
                             f"(got {self.batch}, {self.table_mb}, {self.zipf})")
        if not 0 <= self.sls_fraction <= 1:
            raise ValueError(f"sls_fraction must be in [0, 1], got {self.sls_fraction}")
        for name, value, valid in (("system", self.system, SYSTEMS),
                                   ("timing", self.timing, TIMINGS)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(valid)}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown row distribution {self.distribution!r}; expected one of "
                             f"{', '.join(DISTRIBUTIONS)}")
        if self.trace is not None:
            self.sweeps = [s for s in self.sweeps if s not in ("locality", "colocation",
                                                                "models")]


#: The study's config, as ``recengine.studies`` looks it up.
Config = NMPStudyConfig


class _Case(NamedTuple):
    """One row: the sweep, the setting it changes, the RecNMP config, and the trace's model,
    locality and co-location."""

    sweep: str
    params: dict[str, Any]
    nmp: NMPConfig
    model: str
    zipf: float
    models: int = 1


def _trace(config: NMPStudyConfig, case: _Case) -> Trace:
    if config.trace is not None:
        return Trace.load(config.trace)
    return Trace.from_model(case.model, config.batch, config.distribution, case.zipf,
                            config.table_mb, case.models, config.seed, config.batches)


def _vector_bytes(config: NMPStudyConfig, model: str) -> int:
    if config.vector_bytes is not None:
        return config.vector_bytes
    return 128 if config.trace is not None else model_vector_bytes(model)


def _cases(config: NMPStudyConfig) -> Iterator[_Case]:
    m, z = config.model, config.zipf
    base = NMPConfig.preset(config.system, vector_bytes=_vector_bytes(config, m),
                            timing=config.timing)
    if config.preset_only:
        yield _Case(config.system, {}, base, m, z)
        return
    for sweep in config.sweeps:
        if sweep == "ranks":
            for r, (d, k) in _RANKS.items():
                dram = replace(base.dram, dimms_per_channel=d, ranks_per_dimm=k)
                yield _Case(sweep, {"ranks": r}, replace(base, dram=dram), m, z)
        elif sweep == "cache":
            for kb in (0, 8, 32, 128, 512, 1024):
                yield _Case(sweep, {"cache_kb": kb}, replace(base, cache_bytes=kb * 1024), m, z)
        elif sweep == "locality":
            for zz in (0.0, 0.5, 1.0, 1.5):
                yield _Case(sweep, {"zipf": zz}, base, m, zz)
        elif sweep == "colocation":
            for n in (1, 2, 4, 8):
                yield _Case(sweep, {"models": n}, base, m, z, n)
        elif sweep == "scheduling":
            for on in (True, False):
                yield _Case(sweep, {"table_aware": on}, replace(base, table_aware=on), m, z)
        elif sweep == "profiling":
            for t in (2, 0):
                yield _Case(sweep, {"hot_threshold": t}, replace(base, hot_threshold=t), m, z)
        elif sweep == "models":
            for name in model_names():
                own = replace(base, vector_bytes=_vector_bytes(config, name))
                yield _Case(sweep, {"model": name}, own, name, z)
        elif sweep == "vector":
            for vb in (64, 128, 256):
                yield _Case(sweep, {"vector_bytes": vb}, replace(base, vector_bytes=vb), m, z)
        elif sweep == "energy":
            settings = [("background_mw", "background_mw_per_rank", v) for v in (0.0, 100.0)]
            settings += [("io_pj_per_bit", "io_pj_per_bit", v) for v in (1.0, 2.0)]
            yield _Case(sweep, {}, base, m, z)
            for label, k, v in settings:
                energy = {**(base.energy or {}), k: v}
                yield _Case(sweep, {label: v}, replace(base, energy=energy), m, z)
            # Only the DRAM commands and the channel's I/O: no background, no RankCache.
            energy = {**(base.energy or {}), "background_mw_per_rank": 0.0}
            yield _Case(sweep, {"background_mw": 0.0, "cache_kb": 0},
                        replace(base, energy=energy, cache_bytes=0), m, z)
        elif sweep == "sls_fraction":
            for f in (0.5, 0.79, 0.9, 0.95):
                yield _Case(sweep, {"sls_fraction": f}, base, m, z)


def iter_study(config: NMPStudyConfig, status: Callable[[str], None] = lambda _m: None
               ) -> Iterator[dict[str, Any]]:
    """Run the study, yielding one row per emulated setting (see the module's note)."""
    traces: dict[tuple[str, float, int], Trace] = {}
    runs: dict[tuple[Any, ...], Any] = {}

    def run(trace_key: tuple[str, float, int], cfg: NMPConfig) -> Any:
        key = (trace_key, repr(cfg))
        if key not in runs:
            runs[key] = emulate(traces[trace_key], cfg)
        return runs[key]

    for case in _cases(config):
        status(f"{case.sweep}: {case.params}")
        trace_key = (case.model, case.zipf, case.models)
        if trace_key not in traces:
            traces[trace_key] = _trace(config, case)
        trace = traces[trace_key]
        nmp_cfg = case.nmp
        ranks = nmp_cfg.dram.dimms_per_channel * nmp_cfg.dram.ranks_per_dimm
        host_cfg = replace(nmp_cfg.host(), energy=nmp_cfg.energy)
        host, nmp = run(trace_key, host_cfg), run(trace_key, nmp_cfg)
        speedup = host.latency_ns / nmp.latency_ns
        f = case.params.get("sls_fraction", config.sls_fraction)
        hit_rates = nmp.batch_cache_hit_rate
        yield {
            "config": config.system if config.preset_only else f"{case.sweep}:"
            + (",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in case.params.items()) or "defaults"),
            "sweep": case.sweep,
            "system": config.system,
            "timing": config.timing,
            **case.params,
            "ranks": ranks,
            "vector_bytes": nmp_cfg.vector_bytes,
            "batches": trace.num_batches,
            "lookups": len(trace) // trace.num_batches,
            "host_latency_us": host.latency_ns / 1e3,
            "nmp_latency_us": nmp.latency_ns / 1e3,
            "latency_speedup": speedup,
            "throughput_speedup": 1.0 / ((1.0 - f) + f / speedup),
            "energy_saving": 1.0 - nmp.energy_nj / host.energy_nj,
            "cache_hit_rate": nmp.cache_hit_rate,
            "cold_hit_rate": float(hit_rates[0]),
            "warm_hit_rate": float(hit_rates[-1]),
            "host_row_hit_rate": host.raw["row_hits"] / max(host.raw["dram_reads"], 1),
        }


def run_study(config: NMPStudyConfig) -> list[dict[str, Any]]:
    """All rows: at least ``config``, ``latency_speedup``, ``throughput_speedup`` and
    ``energy_saving``."""
    return list(iter_study(config))


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The setting of the highest latency speedup, and that speedup."""
    best = max(rows, key=lambda r: r["latency_speedup"]) if rows else None
    return {"best": best and best["config"],
            "best_latency_speedup": best and best["latency_speedup"]}


def plot_study(rows: Sequence[dict[str, Any]], path: str,
               config: Optional[NMPStudyConfig] = None) -> None:
    """Latency speedup (left axis) and energy saving (right axis) per setting, one panel per
    sweep, with a parity line at 1x."""
    from ..studies._output import figure, save_figure

    sweeps = list(dict.fromkeys(r["sweep"] for r in rows))
    fig, axes = figure(len(sweeps), columns=min(len(sweeps), 5), size=(3.4, 3.8))
    handles: list[Any] = []
    lat: Any = None
    for ax, sweep in zip(axes, sweeps):
        mine = [r for r in rows if r["sweep"] == sweep]
        labels = [r["config"].split(":", 1)[-1] for r in mine]
        x = np.arange(len(mine))
        if sweep == "sls_fraction":  # what this sweep changes is the throughput speedup
            ax.bar(x - 0.2, [r["throughput_speedup"] for r in mine], 0.4, color="tab:orange")
            ax.set_ylabel("end-to-end throughput speedup (x)")
        else:
            lat = ax.bar(x - 0.2, [r["latency_speedup"] for r in mine], 0.4,
                         label="memory latency speedup (x)")
            ax.set_ylabel("host latency / RecNMP latency (x)")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax2 = ax.twinx()
        saved = [100 * r["energy_saving"] for r in mine]
        energy = ax2.bar(x + 0.2, saved, 0.4, color="tab:green", label="energy saved (%)")
        ax2.set_ylabel("energy saved (%)")
        ax2.set_ylim(min(0.0, min(saved) - 5), 100)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("setting")
        ax.set_title(sweep)
        handles = [h for h in (lat, energy) if h is not None]
    if handles:
        fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=2,
                   fontsize=8)
    setting = ("" if config is None else
               f": {config.trace or config.model}, {config.batches} batches of {config.batch}, "
               f"{config.distribution} rows, {config.system}, {config.timing} timing")
    save_figure(fig, path, f"RecNMP against the DDR4 host{setting}", bottom=0.08)


def config_dict(config: NMPStudyConfig) -> dict[str, Any]:
    d = asdict(config)
    d["sweeps"] = list(config.sweeps)
    d["dram_defaults"] = asdict(DramConfig())
    return d
