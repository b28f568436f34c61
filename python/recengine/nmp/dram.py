"""The DDR4 memory-system model (the core's ``dram`` module) from Python.

:class:`DramConfig` holds the organisation and the timing (DDR4-2400 datasheet defaults, in
clock cycles of ``tck_ns``); :func:`run` emulates the host memory controllers serving 64-byte
line reads (FR-FCFS per channel, channels in parallel, deterministic); :func:`validate`
replays a channel's command trace and checks every timing constraint.

Example::

    >>> import numpy as np
    >>> from recengine.nmp.dram import DramConfig, run
    >>> r = run(np.arange(0, 64 * 1000, 64), DramConfig(channels=2))
    >>> r.reads, r.row_hit_rate > 0.9
    (1000, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any, Optional

import numpy as np

from .. import _core

__all__ = ["DRAM_DEFAULTS", "DramConfig", "DramResult", "run", "validate"]


def _as_dict(self: Any) -> dict[str, Any]:
    return asdict(self)


#: Each setting of the DDR4 model and its default, as the core defines them.
DRAM_DEFAULTS: dict[str, Any] = dict(_core.dram_defaults())

DramConfig = make_dataclass(
    "DramConfig",
    [(name, type(value), field(default=value)) for name, value in DRAM_DEFAULTS.items()],
    namespace={
        "__doc__": (
            "Channels of DIMMs of ranks of bank groups of banks, open-page rows, a controller "
            "queue per channel, and DDR4 timing in cycles of ``tck_ns`` (defaults: DDR4-2400, "
            "17-17-17). The fields and their defaults are the core's (``dram::Config`` in "
            "``rust/core/src/dram.rs``), read from it: see :data:`DRAM_DEFAULTS`."),
        "as_dict": _as_dict,
        "__module__": __name__,
    },
    frozen=True,
)


@dataclass
class DramResult:
    """Per-channel counters and the run's figures; ``traces`` when asked for."""

    config: DramConfig
    channels: list[dict[str, int]]
    traces: list[np.ndarray] = field(default_factory=list)

    @property
    def reads(self) -> int:
        return sum(c["reads"] for c in self.channels)

    @property
    def cycles(self) -> int:
        """When the last burst ended, on any channel."""
        return max((c["finish"] for c in self.channels), default=0)

    @property
    def latency_ns(self) -> float:
        return self.cycles * self.config.tck_ns

    @property
    def bytes_read(self) -> int:
        return self.reads * self.config.line_bytes

    @property
    def row_hit_rate(self) -> float:
        return sum(c["row_hits"] for c in self.channels) / max(self.reads, 1)


def run(addrs: Any, config: Optional[DramConfig] = None, trace: bool = False) -> DramResult:
    """Serve 64-byte line reads at byte ``addrs`` (in arrival order, all arriving at once)."""
    config = config or DramConfig()
    a = np.ascontiguousarray(addrs, dtype=np.int64)
    stats, traces = _core.dram_run(a, config.as_dict(), trace)
    return DramResult(config, [dict(s) for s in stats], list(traces))


def validate(trace: np.ndarray, config: Optional[DramConfig] = None) -> None:
    """Check one channel's command trace (``[n, 6]``: cycle, kind 0/1/2 = ACT/RD/PRE, rank,
    bank group, bank, row) against every timing constraint (ValueError on the first miss)."""
    _core.dram_validate(np.ascontiguousarray(trace, dtype=np.int64),
                        (config or DramConfig()).as_dict())
