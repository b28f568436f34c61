"""DeepRecSys's running-p95 rate controller: the rate search DeepRecSys runs on a live query stream.

Queries arrive one by one (exponential gaps at the current rate). Every ``window`` queries
that complete, the controller takes the p95 latency of the last ``window`` completed and steps
the rate: down (divide by ``step``) when it is over the target, up (multiply) when it is
under ``target / (1 + stable)``, and holds it in between. After ``updates`` steps the answer
is the median of the last ``last`` rates. The defaults are those of the public DeepRecSys
scheduler (64-query windows, a 10% stable band, 128 updates, the median of the last 50);
its rates lie on a fixed grid of 50 log-spaced gaps between 1 and 20 ms (about 6% apart),
here a ``step`` of 5% from a start near the policy's capacity, so that any rate is reachable.

It answers the same question as :func:`~recengine.sched.max_qps` (the highest rate whose
p95 meets the target) on one long run whose rate moves, rather than on one run per rate;
its answer is where the running p95 of 64 queries hovers at the target, so it sits near
(and may pass) the rate at which a long run's p95 just meets it. Where a window lasts much
less than an overload takes to show in the p95 (a fast server far from its target: 64
queries at 30,000 QPS pass in 2 ms), the rate climbs past saturation before the first miss
and the backlog then holds the p95 over the target for many windows: the rate cycles
between about half and one and a half times the capacity, and the answer falls anywhere in
the cycle. Longer windows (``window``) or smaller steps (``step``) settle it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["PROCESSES", "ControllerSettings", "RateController"]

#: The arrival processes a controller draws (others have no single rate to step).
PROCESSES: tuple[str, ...] = ("poisson", "poisson-ms")


@dataclass(frozen=True)
class ControllerSettings:
    """The controller's knobs (the public DeepRecSys scheduler's defaults).

    Attributes:
        window: completed queries per running p95 (and per step of the rate).
        step: the factor a step multiplies or divides the rate by (> 1).
        stable: the rate holds while ``target / (1 + stable) <= p95 <= target``.
        updates: steps before the answer is read.
        last: the answer is the median of this many last rates.
        process: ``"poisson"`` (exponential gaps) or ``"poisson-ms"`` (rounded to whole ms).
    """

    window: int = 64
    step: float = 1.05
    stable: float = 0.1
    updates: int = 128
    last: int = 50
    process: str = "poisson"

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"a running p95 needs a window of at least 2 queries, got "
                             f"{self.window}")
        if not (math.isfinite(self.step) and self.step > 1):
            raise ValueError(f"the rate step must be a factor above 1, got {self.step}")
        if not (math.isfinite(self.stable) and self.stable >= 0):
            raise ValueError(f"the stable band must be non-negative, got {self.stable}")
        if not 1 <= self.last <= self.updates:
            raise ValueError(f"the answer's last rates must number 1 to updates "
                             f"({self.updates}), got {self.last}")
        if self.process not in PROCESSES:
            raise ValueError(f"the controller draws {' or '.join(PROCESSES)} arrivals, got "
                             f"{self.process!r}")

    @property
    def queries(self) -> int:
        """Queries that must complete for the controller to finish."""
        return self.window * self.updates


@dataclass
class RateController:
    """One controlled run: draws each next arrival gap at the current rate and steps the rate
    on the running p95 of completed queries (see the module's docs).

    Args:
        target_ms: the p95 target.
        start_qps: the first rate.
        settings: the knobs.
        seed: seeds the gaps.

    Example::

        >>> c = RateController(10.0, 100.0, ControllerSettings(window=4, updates=3, last=3))
        >>> for ms in [1.0] * 4 + [20.0] * 4 + [9.5] * 4:  # under, over, in the band
        ...     c.observe(ms)
        >>> [round(r, 2) for r in c.rates], c.done, round(c.answer(), 2)
        ([105.0, 100.0, 100.0], True, 100.0)
    """

    target_ms: float
    start_qps: float
    settings: ControllerSettings = field(default_factory=ControllerSettings)
    seed: Optional[int] = 0
    #: The rate after each step, in order.
    rates: list[float] = field(default_factory=list)
    #: The running p95 behind each step.
    p95s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_ms) and self.target_ms > 0):
            raise ValueError(f"the latency target must be positive, got {self.target_ms}")
        if not (math.isfinite(self.start_qps) and self.start_qps > 0):
            raise ValueError(f"the starting rate must be positive, got {self.start_qps}")
        self.rate = float(self.start_qps)
        self.floor = self.start_qps / 2**12  # DeepRecSys's grid is bounded too: no rate below this
        self._recent: list[float] = []
        self._rng = np.random.default_rng(self.seed)

    @property
    def done(self) -> bool:
        """Whether every step has been taken."""
        return len(self.rates) >= self.settings.updates

    def gap_s(self) -> float:
        """The next arrival gap (seconds) at the current rate."""
        gap = float(self._rng.exponential(1.0 / self.rate))
        if self.settings.process == "poisson-ms":
            gap = round(gap * 1e3) / 1e3
        return gap

    def observe(self, latency_ms: float) -> None:
        """One query completed (``inf`` for a shed one); every ``window`` of them steps the
        rate. Completions after the last step are ignored."""
        if self.done:
            return
        self._recent.append(float(latency_ms))
        s = self.settings
        if len(self._recent) < s.window:
            return
        p95 = float(np.quantile(self._recent, 0.95, method="higher"))
        self._recent.clear()
        if p95 > self.target_ms:
            self.rate = max(self.rate / s.step, self.floor)
        elif p95 < self.target_ms / (1 + s.stable):
            self.rate *= s.step
        self.rates.append(self.rate)
        self.p95s.append(p95)

    def answer(self) -> float:
        """The median of the last ``last`` rates (of those taken so far); 0.0 when no step was
        taken, when none of those windows met the target (the rate only fell), or when the
        median is within a step of the floor (``start_qps / 2**12``)."""
        k = self.settings.last
        if not self.rates or min(self.p95s[-k:]) > self.target_ms:
            return 0.0
        rate = float(np.median(self.rates[-k:]))
        return 0.0 if rate <= self.floor * self.settings.step else rate
