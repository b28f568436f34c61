"""recengine.nmp: emulating near-memory processing of SparseLengthsSum (RecNMP, R7).

So far: the DDR4 memory-system model and the host baseline (:mod:`recengine.nmp.dram`).
"""

from .dram import DramConfig, DramResult, run, validate

__all__ = ["DramConfig", "DramResult", "run", "validate"]
