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

Sweeps: ranks per channel (1-8); RankCache size (0-1 MiB); locality (the exponent of a
bounded Zipf law over each table's rows, 0 = uniform, default 1.0); co-located models (1-8,
their lookups interleaved); table-aware scheduling and hot-entry profiling off. Traces: ``batch``
samples of the model's tables (DeepRecInfra shapes scaled to ``table_mb``) with their pooling
factors, rows from ``distribution`` (uniform, Zipf, Pareto or production-like), or a trace file.

Example::

    >>> rows = run_study(NMPStudyConfig(model="ncf", batch=8, sweeps=("ranks",),
    ...                                 table_mb=4))
    >>> sorted(r["ranks"] for r in rows)
    [1, 2, 4, 8]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..rows import DISTRIBUTIONS
from ..shapes import resolve_model
from .dram import DramConfig
from .emulator import TIMINGS, NMPConfig, Trace, emulate

__all__ = ["SWEEPS", "SYSTEMS", "Config", "NMPStudyConfig", "iter_study", "plot_study", "run_study",
           "summarize_study"]

#: What the study can vary (one at a time, the rest at the paper's configuration).
SWEEPS: tuple[str, ...] = ("ranks", "cache", "locality", "colocation", "scheduling",
                           "profiling")
_RANKS = {1: (1, 1), 2: (1, 2), 4: (2, 2), 8: (4, 2)}  # ranks per channel: (DIMMs, ranks each)
#: The memory systems a study can start from (presets of :meth:`NMPConfig.preset`).
SYSTEMS: tuple[str, ...] = ("recnmp", "recnmp-2x2")


@dataclass
class NMPStudyConfig:
    """What :func:`run_study` emulates (see the module's note)."""

    model: str = "rmc1"
    batch: int = 64
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

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)
        for s in self.sweeps:
            if s not in SWEEPS:
                raise ValueError(f"unknown sweep {s!r}; expected some of {', '.join(SWEEPS)}")
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
            self.sweeps = [s for s in self.sweeps if s not in ("locality", "colocation")]


#: The study's config, as ``recengine.studies`` looks it up.
Config = NMPStudyConfig


def _trace(config: NMPStudyConfig, zipf: float, models: int) -> Trace:
    if config.trace is not None:
        return Trace.load(config.trace)
    return Trace.from_model(config.model, config.batch, config.distribution, zipf,
                            config.table_mb, models, config.seed)


def _cases(config: NMPStudyConfig) -> Iterator[tuple[str, dict[str, Any], NMPConfig, float, int]]:
    base = NMPConfig.preset(config.system, vector_bytes=128, timing=config.timing)
    if config.preset_only:
        yield config.system, {}, base, config.zipf, 1
        return
    for sweep in config.sweeps:
        if sweep == "ranks":
            for r, (d, k) in _RANKS.items():
                dram = replace(base.dram, dimms_per_channel=d, ranks_per_dimm=k)
                yield sweep, {"ranks": r}, replace(base, dram=dram), config.zipf, 1
        elif sweep == "cache":
            for kb in (0, 8, 32, 128, 512, 1024):
                yield sweep, {"cache_kb": kb}, replace(base, cache_bytes=kb * 1024), config.zipf, 1
        elif sweep == "locality":
            for z in (0.0, 0.5, 1.0, 1.5):
                yield sweep, {"zipf": z}, base, z, 1
        elif sweep == "colocation":
            for m in (1, 2, 4, 8):
                yield sweep, {"models": m}, base, config.zipf, m
        elif sweep == "scheduling":
            for on in (True, False):
                yield sweep, {"table_aware": on}, replace(base, table_aware=on), config.zipf, 1
        elif sweep == "profiling":
            for t in (2, 0):
                yield sweep, {"hot_threshold": t}, replace(base, hot_threshold=t), config.zipf, 1


def iter_study(config: NMPStudyConfig, status: Callable[[str], None] = lambda _m: None
               ) -> Iterator[dict[str, Any]]:
    """Run the study, yielding one row per emulated setting (see the module's note)."""
    traces: dict[tuple[float, int], Trace] = {}
    hosts: dict[tuple[float, int, int], Any] = {}
    f = config.sls_fraction
    for sweep, params, nmp_cfg, zipf, models in _cases(config):
        status(f"{sweep}: {params}")
        key = (zipf, models)
        if key not in traces:
            traces[key] = _trace(config, zipf, models)
        trace = traces[key]
        ranks = nmp_cfg.dram.dimms_per_channel * nmp_cfg.dram.ranks_per_dimm
        host_key = (zipf, models, ranks)
        if host_key not in hosts:
            hosts[host_key] = emulate(trace, nmp_cfg.host())
        host = hosts[host_key]
        nmp = emulate(trace, nmp_cfg)
        speedup = host.latency_ns / nmp.latency_ns
        yield {
            "config": f"{sweep}:" + ",".join(f"{k}={v}" for k, v in params.items())
            if params else config.system,
            "sweep": sweep,
            "system": config.system,
            "timing": config.timing,
            **params,
            "ranks": ranks,
            "lookups": len(trace),
            "host_latency_us": host.latency_ns / 1e3,
            "nmp_latency_us": nmp.latency_ns / 1e3,
            "latency_speedup": speedup,
            "throughput_speedup": 1.0 / ((1.0 - f) + f / speedup),
            "energy_saving": 1.0 - nmp.energy_nj / host.energy_nj,
            "cache_hit_rate": nmp.cache_hit_rate,
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
    fig, axes = figure(len(sweeps), columns=len(sweeps), size=(3.4, 3.8))
    handles: list[Any] = []
    for ax, sweep in zip(axes, sweeps):
        mine = [r for r in rows if r["sweep"] == sweep]
        labels = [r["config"].split(":", 1)[-1] for r in mine]
        x = np.arange(len(mine))
        lat = ax.bar(x - 0.2, [r["latency_speedup"] for r in mine], 0.4,
                     label="memory latency speedup (x)")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("host latency / RecNMP latency (x)")
        ax2 = ax.twinx()
        saved = [100 * r["energy_saving"] for r in mine]
        energy = ax2.bar(x + 0.2, saved, 0.4, color="tab:green", label="energy saved (%)")
        ax2.set_ylabel("energy saved (%)")
        ax2.set_ylim(min(0.0, min(saved) - 5), 100)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("setting")
        ax.set_title(sweep)
        handles = [lat, energy]
    if handles:
        fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=2,
                   fontsize=8)
    setting = ("" if config is None else
               f": {config.trace or config.model}, batch {config.batch}, "
               f"{config.distribution} rows, {config.system}, {config.timing} timing")
    save_figure(fig, path, f"RecNMP against the DDR4 host{setting}", bottom=0.08)


def config_dict(config: NMPStudyConfig) -> dict[str, Any]:
    d = asdict(config)
    d["sweeps"] = list(config.sweeps)
    d["dram_defaults"] = asdict(DramConfig())
    return d
