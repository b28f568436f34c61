"""Latency curves: how long one core (or an accelerator) takes to run a batch of ``b`` items,
profiled at a few batch sizes and interpolated between them: linearly in the batch size (a
CPU forward's cost grows about linearly between nearby sizes), or in ``log(batch)`` as
DeepRecSys models its accelerator (DeepRecSys). A curve profiled through a server also carries the
spread of the times it saw around each median, so a simulator can draw service times with the
tail that sets a p95 at tight targets. Cores slow each other down as more of them are busy
(memory bandwidth, caches, clock speed, a shared parent), so a server can be profiled at
several loads (:class:`CurvesByLoad`) and a simulator takes the curve of the load each run
puts on it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

__all__ = ["ACCELERATOR_BATCHES", "PROFILE_BATCHES", "SPREAD_QUANTILES", "Cpu", "CurvesByLoad",
           "LatencyCurve", "check_loads", "profile"]

#: The batch sizes of DeepRecSys's accelerator latency model.
ACCELERATOR_BATCHES: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
#: The batch sizes a CPU curve is profiled at by default: DeepRecSys's, and more points where
#: queries' sizes and DeepRecSched's batch sizes lie.
PROFILE_BATCHES: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256, 512, 1024)
#: How many equally likely values a profiled spread keeps per batch size (the quantiles at
#: ``(k + 0.5) / SPREAD_QUANTILES``).
SPREAD_QUANTILES = 64


@dataclass(frozen=True)
class LatencyCurve:
    """Milliseconds to run a batch, measured at ``batches`` (increasing) as ``ms``.

    Between two points the latency is linear in the batch (``interpolation="linear"``) or in
    ``log(batch)`` (``"log"``, DeepRecSys's accelerator model); past the last point it grows in
    proportion to the batch (the per-item cost of the largest batch); below the first it is
    the first point's.

    Example::

        >>> c = LatencyCurve((1, 4, 16), (1.0, 2.0, 5.0), interpolation="log")
        >>> c(2), c(16), c(32)
        (1.5, 5.0, 10.0)
        >>> LatencyCurve((1, 4, 16), (1.0, 2.0, 5.0))(10)
        3.5

    ``spread`` (optional) holds, for each batch size, equally likely ratios of a service time
    to its median, sorted (the same count at every size): :meth:`sample` draws times from it,
    taking the spread of the profiled size nearest in ``log(batch)``. Without it, every draw
    is the median. :meth:`from_samples` builds a curve from raw timings::

        >>> c = LatencyCurve.from_samples((1, 8), [[1.0, 1.0, 3.0], [2.0, 2.0, 2.0]], quantiles=3)
        >>> c.ms, c.spread
        ((1.0, 2.0), ((1.0, 1.0, 3.0), (1.0, 1.0, 1.0)))
        >>> c.sample(np.array([1, 1, 8]), np.array([0.1, 0.9, 0.9])).tolist()
        [1.0, 3.0, 2.0]
    """

    batches: tuple[int, ...]
    ms: tuple[float, ...]
    label: str = ""
    interpolation: str = "linear"
    spread: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if len(self.batches) != len(self.ms) or not self.batches:
            raise ValueError("a latency curve needs as many latencies as batch sizes (>= 1)")
        if any(b < 1 for b in self.batches) or any(
                b >= c for b, c in zip(self.batches, self.batches[1:])):
            raise ValueError(f"batch sizes must be positive and increasing, got {self.batches}")
        if any(not (math.isfinite(m) and m > 0) for m in self.ms):
            raise ValueError(f"latencies must be positive, got {self.ms}")
        if self.interpolation not in ("linear", "log"):
            raise ValueError(f"interpolation is 'linear' or 'log', got {self.interpolation!r}")
        if self.spread:
            if len(self.spread) != len(self.batches):
                raise ValueError(f"a spread needs one row per batch size ({len(self.batches)}), "
                                 f"got {len(self.spread)}")
            if len({len(row) for row in self.spread}) != 1 or not self.spread[0]:
                raise ValueError("every row of a spread needs the same number (>= 1) of ratios")
            for row in self.spread:
                if any(not (math.isfinite(r) and r > 0) for r in row) or any(
                        a > b for a, b in zip(row, row[1:])):
                    raise ValueError(f"a spread's ratios must be positive and sorted, got {row}")

    def __call__(self, batch: float) -> float:
        """Latency in ms of a batch of ``batch`` items (``batch >= 1``)."""
        return float(self.many(np.array([batch]))[0])

    def many(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`__call__` for an array of batch sizes."""
        batch = np.maximum(np.asarray(batch, dtype=np.float64), 1.0)
        points = np.asarray(self.batches, dtype=np.float64)
        if self.interpolation == "log":
            inside = np.interp(np.log(batch), np.log(points), self.ms)
        else:
            inside = np.interp(batch, points, self.ms)
        return np.where(batch >= self.batches[-1], self.ms[-1] * batch / self.batches[-1],
                        inside)

    def scaled(self, factor: float, label: Optional[str] = None) -> LatencyCurve:
        """Every latency times ``factor``."""
        return LatencyCurve(self.batches, tuple(m * factor for m in self.ms),
                            self.label if label is None else label, self.interpolation,
                            self.spread)

    def sample(self, batch: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Service times (ms) of batches of ``batch`` items, one for each uniform draw ``u``
        (``[n]`` each, ``u`` in ``[0, 1)``): the median times the ``u``-quantile ratio of the
        nearest profiled batch size's spread (the median alone without a spread)."""
        ms = self.many(batch)
        if not self.spread:
            return ms
        batch = np.maximum(np.asarray(batch, dtype=np.float64), 1.0)
        logs = np.log(np.asarray(self.batches, dtype=np.float64))
        # The nearest profiled size in log(batch): the midpoints between sizes split them.
        nearest = np.searchsorted((logs[1:] + logs[:-1]) / 2, np.log(batch))
        ratios = np.asarray(self.spread)
        k = np.minimum((np.asarray(u) * ratios.shape[1]).astype(np.int64), ratios.shape[1] - 1)
        return ms * ratios[nearest, k]

    @classmethod
    def from_samples(cls, batches: Sequence[int], samples_ms: Sequence[Sequence[float]],
                     label: str = "", interpolation: str = "linear",
                     quantiles: int = SPREAD_QUANTILES) -> LatencyCurve:
        """A curve of the medians of ``samples_ms`` (timings at each of ``batches``), with a
        spread of ``quantiles`` equally likely ratios to the median: the quantiles at
        ``(k + 0.5) / quantiles``."""
        if len(samples_ms) != len(batches):
            raise ValueError(f"{len(batches)} batch sizes but {len(samples_ms)} sets of timings")
        if quantiles < 1:
            raise ValueError(f"a spread needs at least one quantile, got {quantiles}")
        ms, spread = [], []
        at = (np.arange(quantiles) + 0.5) / quantiles
        for b, times in zip(batches, samples_ms):
            t = np.asarray(times, dtype=np.float64)
            if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
                raise ValueError(f"batch {b}: timings must be positive and finite, and at "
                                 f"least one")
            median = float(np.median(t))
            ms.append(median)
            spread.append(tuple(float(r) for r in np.quantile(t, at, method="inverted_cdf")
                                / median))
        return cls(tuple(int(b) for b in batches), tuple(ms), label, interpolation,
                   tuple(spread))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"batches": list(self.batches), "ms": list(self.ms),
                             "label": self.label, "interpolation": self.interpolation}
        if self.spread:
            d["spread"] = [list(row) for row in self.spread]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], interpolation: str = "linear") -> LatencyCurve:
        """From :meth:`to_dict`'s form (``interpolation`` when the dict names none)."""
        return cls(tuple(int(b) for b in d["batches"]), tuple(float(m) for m in d["ms"]),
                   str(d.get("label", "")), str(d.get("interpolation", interpolation)),
                   tuple(tuple(float(r) for r in row) for row in d.get("spread", ())))


def check_loads(loads: Sequence[float]) -> tuple[float, ...]:
    """``loads`` as floats, or ValueError unless they are increasing fractions in (0, 1]
    (at least one).

    Example::

        >>> check_loads([0.3, 0.9])
        (0.3, 0.9)
    """
    out = tuple(float(x) for x in loads)
    if not out or any(not 0 < x <= 1 for x in out) or any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"loads must be increasing fractions in (0, 1], got {list(out)}")
    return out


@dataclass(frozen=True)
class CurvesByLoad:
    """One server's latency curves profiled at several ``loads`` (fractions of its cores'
    capacity, increasing), all at the same batch sizes: where sub-requests take longer the
    busier the server is, a run at a given rate is served at the curve of the load it puts on
    the cores (:meth:`settle`).

    Between two profiled loads the medians are linear in the load and the spread is the nearer
    load's; outside them the end curve holds. Called as a curve (``curves(batch)``,
    :meth:`many`), it is the curve of the highest load: where a throughput search ends,
    so that capacity guesses start from it.

    Example::

        >>> light = LatencyCurve((1, 64), (1.0, 4.0))
        >>> c = CurvesByLoad((0.5, 0.9), (light, light.scaled(1.5)))
        >>> c.at(0.7).ms, c.at(0.2).ms, c(64)
        ((1.25, 5.0), (1.0, 4.0), 6.0)
    """

    loads: tuple[float, ...]
    curves: tuple[LatencyCurve, ...]

    def __post_init__(self) -> None:
        if len(self.loads) != len(self.curves) or not self.loads:
            raise ValueError("CurvesByLoad needs as many curves as loads (>= 1)")
        check_loads(self.loads)
        first = self.curves[0]
        for c in self.curves[1:]:
            if c.batches != first.batches or c.interpolation != first.interpolation:
                raise ValueError("the curves of CurvesByLoad must share their batch sizes and "
                                 "interpolation")

    @property
    def spread(self) -> tuple[tuple[float, ...], ...]:
        """The highest load's spread (empty when some curve has none: then none is drawn)."""
        return self.curves[-1].spread if all(c.spread for c in self.curves) else ()

    def __call__(self, batch: float) -> float:
        return self.curves[-1](batch)

    def many(self, batch: np.ndarray) -> np.ndarray:
        return self.curves[-1].many(batch)

    def at(self, load: float) -> LatencyCurve:
        """The curve at ``load``: medians linear in the load between the profiled loads."""
        loads = self.loads
        if load <= loads[0]:
            return self.curves[0]
        if load >= loads[-1]:
            return self.curves[-1]
        k = int(np.searchsorted(loads, load)) - 1  # loads[k] < load < loads[k + 1]
        w = (load - loads[k]) / (loads[k + 1] - loads[k])
        lo, hi = self.curves[k], self.curves[k + 1]
        ms = tuple((1 - w) * a + w * b for a, b in zip(lo.ms, hi.ms))
        return LatencyCurve(lo.batches, ms, hi.label, lo.interpolation,
                            (lo if w < 0.5 else hi).spread)

    def settle(self, utilization: Callable[[LatencyCurve], float]) -> tuple[float, LatencyCurve]:
        """The load a run puts on the cores and its curve: the lowest load ``x`` at which
        ``utilization(self.at(x))`` (the run's work on that curve over the cores' time) is
        ``x``, clamped to the profiled loads. A run's work is linear in the curve's medians,
        so it is solved exactly from one utilization per profiled curve.

        Example::

            >>> light = LatencyCurve((1, 64), (1.0, 1.0))
            >>> c = CurvesByLoad((0.5, 0.9), (light, light.scaled(1.5)))
            >>> load, curve = c.settle(lambda cv: 0.55 * cv(1))  # 0.55 of the cores at 1 ms
            >>> round(load, 3), round(curve(1), 3)  # 0.55 x 1.2 ms = 0.66
            (0.66, 1.2)
        """
        u = [utilization(c) for c in self.curves]
        x = self.loads
        if u[0] <= x[0]:
            return x[0], self.curves[0]
        for k in range(len(x) - 1):
            # On [x_k, x_k+1] the utilization is linear in the load: find where it meets x.
            g0, g1 = u[k] - x[k], u[k + 1] - x[k + 1]
            if g1 <= 0:
                load = x[k] + (x[k + 1] - x[k]) * g0 / (g0 - g1)
                return load, self.at(load)
        return x[-1], self.curves[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"loads": list(self.loads), "curves": [c.to_dict() for c in self.curves]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurvesByLoad:
        """From :meth:`to_dict`'s form."""
        return cls(tuple(float(x) for x in d["loads"]),
                   tuple(LatencyCurve.from_dict(c) for c in d["curves"]))


#: One core's service times: one latency curve, or curves profiled at several loads.
Cpu = Union[LatencyCurve, CurvesByLoad]


def profile(run: Callable[[int], Any], batches: Sequence[int] = PROFILE_BATCHES,
            repeats: int = 5, budget_s: float = 2.0, label: str = "") -> LatencyCurve:
    """Time ``run(batch)`` at each batch size: the median of up to ``repeats`` runs after one
    warm-up, fewer when a batch size's runs would pass ``budget_s``.

    Example::

        >>> c = profile(lambda b: sum(range(b)), batches=(1, 64), repeats=2)
        >>> c.batches
        (1, 64)
    """
    ms = []
    for b in batches:
        run(b)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max(repeats, 1):
            t0 = time.perf_counter()
            run(b)
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - start > budget_s:
                break
        ms.append(max(float(np.median(times)), 1e-6))
    return LatencyCurve(tuple(batches), tuple(ms), label)
