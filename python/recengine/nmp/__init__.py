"""recengine.nmp: emulating near-memory processing of SparseLengthsSum (RecNMP).

The DDR4 memory-system model and host baseline (:mod:`recengine.nmp.dram`), the RecNMP
emulation of SLS traces with RankCache, hot-entry profiling, table-aware scheduling and an
energy account (:mod:`recengine.nmp.emulator`), and a model's SLS latency per batch size on
RecNMP for serving studies (:mod:`recengine.nmp.curve`).

Example::

    >>> from recengine.nmp import NMPConfig, Trace, emulate
    >>> t = Trace.synthetic([10_000] * 2, bags=8, pooling=20)
    >>> emulate(t, NMPConfig.preset("ddr4-baseline")).raw["dram_reads"]
    640
"""

from .curve import SLSCurve, profile_sls
from .dram import DramConfig, DramResult, run, validate
from .emulator import (
    PRESETS,
    TECHNOLOGIES,
    TIMINGS,
    EmulationResult,
    NMPConfig,
    NMPDevice,
    Trace,
    emulate,
    rank_dram_config,
)

__all__ = ["PRESETS", "TECHNOLOGIES", "TIMINGS", "DramConfig", "DramResult", "EmulationResult",
           "NMPConfig", "NMPDevice", "SLSCurve", "Trace", "emulate", "profile_sls",
           "rank_dram_config", "run", "validate"]
