"""RecNMP as a serving device: a model's SLS latency per batch size on emulated memory.

:func:`profile_sls` emulates, for each batch size ``b``, a stream of batches of ``b`` samples
of a DeepRecInfra model's lookups on the DDR4 host and on RecNMP (the RankCaches warm across
the stream, as on a server that keeps serving the model), and returns an :class:`SLSCurve`:
the memory time of the stream's last batch's SparseLengthsSum on each. A serving
simulator uses it through :meth:`SLSCurve.on_cpu`, the cost model of a "CPU + NMP" server:
the model's dense part stays on the CPU cores and its SLS runs on the NMP units, so a batch
that takes ``cpu(b)`` ms on the CPU alone takes

    ``cpu(b) * ((1 - f) + f * nmp(b) / host(b))``

where ``f`` is the share of the CPU's time in SLS (``sls_fraction``, 0.79 by default as in
``recengine nmp``) and ``nmp(b) / host(b)`` the emulated memory-time ratio. The host-side work
of offloading (building NMP instructions, summing the DIMMs' partial results) is taken to be
hidden behind the dense part, as RecNMP assumes; the curve's ``speedup`` says how much SLS
gains at each batch size.

Example::

    >>> from recengine.sched import LatencyCurve
    >>> curve = profile_sls("rmc1", batches=(1, 16, 64), table_mb=4)
    >>> curve.batches, all(s > 1 for s in curve.speedup)
    ((1, 16, 64), True)
    >>> cpu = LatencyCurve((1, 16, 64), (0.2, 0.5, 1.5))
    >>> curve.on_cpu(cpu)(64) < cpu(64)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..sched.latency import ACCELERATOR_BATCHES, LatencyCurve
from .emulator import TIMINGS, NMPConfig, Trace, emulate, model_vector_bytes

__all__ = ["SLSCurve", "profile_sls"]


@dataclass(frozen=True)
class SLSCurve:
    """A model's SLS memory time (ms) per batch size on RecNMP (``nmp_ms``) and on the DDR4
    host (``host_ms``) of one memory system (``system``, a preset of
    :meth:`NMPConfig.preset`), as :func:`profile_sls` measures it."""

    model: str
    system: str
    batches: tuple[int, ...]
    nmp_ms: tuple[float, ...]
    host_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.batches)
        if not n or len(self.nmp_ms) != n or len(self.host_ms) != n:
            raise ValueError("an SLS curve needs one NMP and one host time per batch size")
        if any(not (math.isfinite(m) and m > 0) for m in self.nmp_ms + self.host_ms):
            raise ValueError("SLS times must be positive")

    @property
    def speedup(self) -> tuple[float, ...]:
        """Host time / RecNMP time at each batch size."""
        return tuple(h / n for h, n in zip(self.host_ms, self.nmp_ms))

    def nmp(self) -> LatencyCurve:
        """The RecNMP SLS time as a :class:`LatencyCurve`."""
        return LatencyCurve(self.batches, self.nmp_ms, f"{self.model} SLS on {self.system}")

    def host(self) -> LatencyCurve:
        """The DDR4 host's SLS time as a :class:`LatencyCurve`."""
        return LatencyCurve(self.batches, self.host_ms, f"{self.model} SLS on the host")

    def on_cpu(self, cpu: LatencyCurve, sls_fraction: float = 0.79) -> LatencyCurve:
        """The latency curve of a "CPU + NMP" server: ``cpu`` (the model on the CPU alone)
        with its SLS share ``sls_fraction`` scaled by this curve's RecNMP / host time, at
        ``cpu``'s batch sizes (see the module's note)."""
        if not 0 <= sls_fraction <= 1:
            raise ValueError(f"sls_fraction must be in [0, 1], got {sls_fraction}")
        sizes = np.asarray(cpu.batches, dtype=np.float64)
        ratio = self.nmp().many(sizes) / self.host().many(sizes)
        ms = np.asarray(cpu.ms) * ((1 - sls_fraction) + sls_fraction * ratio)
        return LatencyCurve(cpu.batches, tuple(float(m) for m in ms),
                            f"{cpu.label or 'CPU'} + {self.system}", cpu.interpolation)


def profile_sls(model: str, batches: Sequence[int] = ACCELERATOR_BATCHES,
                system: str = "recnmp", table_mb: Optional[float] = 256.0,
                distribution: str = "zipf", zipf: float = 1.0, seed: int = 0,
                timing: str = "fast", config: Optional[NMPConfig] = None,
                stream: int = 4) -> SLSCurve:
    """Emulate ``model``'s SLS at each of ``batches`` (increasing sizes) on ``system``'s
    RecNMP and DDR4 host (or on ``config`` and the host of its memory), with the model's
    fp32 vector size: for each size ``b``, a stream of ``stream`` batches, batch ``j`` the
    first ``b`` samples of batch ``j`` of one stream of the model's lookups (``distribution``
    rows, parameter ``zipf``, tables scaled to ``table_mb`` MiB), timed on its last batch
    (caches warmed by the ones before). A larger batch holds every lookup of a smaller one."""
    sizes = tuple(int(b) for b in batches)
    if not sizes or sizes[0] < 1 or any(a >= b for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"batch sizes must be positive and increasing, got {tuple(batches)}")
    if timing not in TIMINGS:
        raise ValueError(f"unknown timing {timing!r}; expected one of {', '.join(TIMINGS)}")
    if stream < 1:
        raise ValueError(f"stream must be >= 1 batch, got {stream}")
    nmp_cfg = replace(config or NMPConfig.preset(system, vector_bytes=model_vector_bytes(model)),
                      timing=timing)
    host_cfg = nmp_cfg.host()
    whole = Trace.from_model(model, sizes[-1], distribution, zipf, table_mb, seed=seed,
                             batches=stream)
    nmp_ms, host_ms = [], []
    for b in sizes:
        trace = whole.take(whole.bags % sizes[-1] < b)
        nmp_ms.append(float(emulate(trace, nmp_cfg).batch_latency_ns[-1]) / 1e6)
        host_ms.append(float(emulate(trace, host_cfg).batch_latency_ns[-1]) / 1e6)
    return SLSCurve(model, system if config is None else "custom", sizes, tuple(nmp_ms),
                    tuple(host_ms))
