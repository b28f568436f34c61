"""Latency-bounded throughput and DeepRecSched's search (DeepRecSys).

The latency-bounded throughput of a policy is the highest arrival rate whose p95 latency
meets the target with no query shed. :func:`max_qps` finds it by bracketing and bisecting
the rate (each step one run of the query stream); :func:`controlled_qps` finds it as DeepRecSys
does, with a running-p95 rate controller on one long run (:mod:`.controller`). :func:`deeprecsched`
hill-climbs the batch size over :data:`BATCH_SIZES` (largest first), then the offload
threshold over :data:`THRESHOLDS` the same way, with either search. The static baseline
(:data:`STATIC`) splits every query into sub-requests of a fixed 32 items, nothing offloaded:
the fixed per-core batch size that DeepRecInfra runs with when its scheduler is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

from .controller import ControllerSettings, RateController
from .result import Policy, RunResult

__all__ = [
    "BATCH_SIZES",
    "STATIC",
    "THRESHOLDS",
    "Backend",
    "Tuned",
    "controlled_qps",
    "deeprecsched",
    "max_qps",
    "static_baseline",
]

#: DeepRecSched's batch sizes, in the order it tries them (DeepRecSys, after the whole query).
BATCH_SIZES: tuple[int, ...] = (1024, 512, 384, 256, 192, 128, 96, 64, 48, 32)
#: Offload thresholds, in the order they are tried (queries of at least this size offload).
THRESHOLDS: tuple[int, ...] = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 32, 16, 1)
#: The static baseline: every query split into sub-requests of a fixed 32 items, nothing
#: offloaded. This is the per-core batch size DeepRecInfra serves with when DeepRecSched is
#: off (the public DeepRecSys code's unscheduled run script); ``Policy(1024)`` runs every
#: query whole instead.
STATIC = Policy(32)


class Backend(Protocol):
    """Runs a query stream under a policy at a rate: the simulator or the real server."""

    has_accelerator: bool
    #: How many more times a rate that misses the target is run before it counts as a miss
    #: (0 for a deterministic backend; more for a real server's rare slow stretches).
    confirm: int

    def run(self, policy: Policy, rate_qps: float) -> RunResult: ...

    def run_controlled(self, policy: Policy, controller: RateController) -> RunResult:
        """One run whose arrival rate ``controller`` sets as its queries complete, until it
        has taken every step (DeepRecSys's search)."""
        ...

    def largest_query(self) -> int:
        """The most items a query of this backend's workload has (a batch size at or above
        it runs every query whole)."""
        ...

    def capacity_hint(self, policy: Policy) -> float:
        """A rate (queries/s) near where the policy saturates, to start the search from."""
        ...


@dataclass
class Tuned:
    """A policy, its latency-bounded throughput, the run at that rate, and every (policy,
    qps) the search tried, in order."""

    policy: Policy
    qps: float
    result: Optional[RunResult]
    tried: list[tuple[Policy, float]] = field(default_factory=list)


def max_qps(measure: Callable[[float], RunResult], target_ms: float, start_qps: float,
            rel_tol: float = 0.02, max_runs: int = 40,
            confirm: int = 0) -> tuple[float, Optional[RunResult]]:
    """The highest rate whose run meets ``target_ms`` at p95 with nothing shed.

    Starts at ``start_qps``, doubles or halves until the answer is bracketed, then bisects
    until the bracket is within ``rel_tol``. Returns ``(0.0, None)`` when even
    ``start_qps / 2**12`` misses the target. A rate that misses is run up to ``confirm``
    more times and counts as a miss only if every run misses: bisection takes the rates
    below a miss as met, so one slow stretch of a real server (a stall, a cold core) would
    otherwise end a search far below what the server sustains.

    Example::

        >>> from recengine.sched.result import RunResult
        >>> run = lambda q: RunResult([1.0 if q <= 70 else 9.0] * 20)
        >>> qps, _ = max_qps(run, 5.0, 10.0)
        >>> 70 / 1.02 <= qps <= 70
        True
    """
    if not target_ms > 0:
        raise ValueError(f"the latency target must be positive, got {target_ms}")
    if not start_qps > 0:
        raise ValueError(f"the starting rate must be positive, got {start_qps}")
    if confirm < 0:
        raise ValueError(f"confirm must be non-negative, got {confirm}")

    runs = 0
    lo, hi = 0.0, float("inf")
    best: Optional[RunResult] = None
    rate = start_qps
    while runs < max_runs:
        r = measure(rate)
        runs += 1
        for _ in range(confirm):
            if r.meets(target_ms):
                break
            r = measure(rate)
            runs += 1
        if r.meets(target_ms):
            lo, best = rate, r
        else:
            hi = rate
        if hi == float("inf"):
            rate *= 2
        elif lo == 0.0:
            if rate < start_qps / 2**12:
                return 0.0, None
            rate /= 2
        elif hi / lo <= 1 + rel_tol:
            break
        else:
            rate = (lo * hi) ** 0.5
    return lo, best


def controlled_qps(backend: Backend, policy: Policy, target_ms: float,
                   settings: Optional[ControllerSettings] = None,
                   start_qps: Optional[float] = None) -> tuple[float, Optional[RunResult]]:
    """DeepRecSys's rate search: one run of ``backend`` under ``policy`` whose rate a
    :class:`~.controller.RateController` steps on the running p95 of 64 completed queries,
    starting at ``start_qps`` (default: half the backend's capacity hint). Returns the
    controller's answer (the median of its last rates; 0.0 when it found none,
    :meth:`~.controller.RateController.answer`) and a run
    at that fixed rate (``None`` for 0.0), whose p95 and p99 are the policy's at its answer:
    the controller holds a 64-query p95 at the target, so a long run's p95 may pass it.

    Example::

        >>> from recengine.sched import LatencyCurve, SimulatedServer
        >>> sim = SimulatedServer(LatencyCurve((1, 1024), (1.0, 1.0)), cores=2)
        >>> qps, run = controlled_qps(sim, Policy(1024), target_ms=5.0)
        >>> 1000 < qps < 2000, run.queries >= 2000  # 2 cores of 1 ms saturate at 2000 QPS
        (True, True)
    """
    settings = ControllerSettings() if settings is None else settings
    start = backend.capacity_hint(policy) / 2 if start_qps is None else start_qps
    controller = RateController(target_ms, start, settings, getattr(backend, "seed", 0))
    backend.run_controlled(policy, controller)
    qps = controller.answer()
    if qps <= 0:
        return 0.0, None
    return qps, backend.run(policy, qps)


def _evaluate(backend: Backend, policy: Policy, target_ms: float, rel_tol: float,
              controller: Optional[ControllerSettings]) -> tuple[float, Optional[RunResult]]:
    if controller is not None:
        return controlled_qps(backend, policy, target_ms, controller)
    return max_qps(lambda q: backend.run(policy, q), target_ms, backend.capacity_hint(policy),
                   rel_tol, confirm=getattr(backend, "confirm", 0))


def static_baseline(backend: Backend, target_ms: float, rel_tol: float = 0.02,
                    policy: Policy = STATIC,
                    controller: Optional[ControllerSettings] = None) -> Tuned:
    """The static baseline's latency-bounded throughput: one fixed ``policy``
    (:data:`STATIC` by default), found by bisection (:func:`max_qps`, within ``rel_tol``) or,
    given ``controller`` settings, by DeepRecSys's controller (:func:`controlled_qps`)."""
    qps, result = _evaluate(backend, policy, target_ms, rel_tol, controller)
    return Tuned(policy, qps, result, [(policy, qps)])


def deeprecsched(backend: Backend, target_ms: float, batch_sizes: Sequence[int] = BATCH_SIZES,
                 thresholds: Sequence[int] = THRESHOLDS, rel_tol: float = 0.02,
                 patience: Optional[int] = None,
                 progress: Optional[Callable[[Policy, float], None]] = None,
                 known: Sequence[Tuned] = (),
                 controller: Optional[ControllerSettings] = None) -> Tuned:
    """DeepRecSched: climb the batch sizes in order, then (with an accelerator) the offload
    thresholds, keeping the policy of the highest latency-bounded throughput. Each policy's
    throughput is found by bisection (:func:`max_qps`) or, given ``controller`` settings, by
    DeepRecSys's running-p95 controller (:func:`controlled_qps`).

    DeepRecSys stops a climb at the first drop in throughput (``patience=0``); measured latency
    curves are not always unimodal (a batch that spills the cache can be slower per item than
    a smaller one, so QPS dips and recovers), so by default (``patience=None``) every
    candidate is tried; ``patience=k`` stops after ``k + 1`` tries in a row without a new
    best. ``progress(policy, qps)`` is told of every policy tried. Policies already searched
    on this backend (``known``, e.g. the static baseline) are not searched again."""
    tried: list[tuple[Policy, float]] = []
    largest = backend.largest_query()

    def same(policy: Policy) -> Policy:
        # Batch sizes of at least the largest query all run queries whole, and thresholds
        # above it offload nothing: one search each.
        thr = policy.offload_threshold
        return Policy(min(policy.batch_size, largest),
                      None if thr is not None and thr > largest else thr)

    seen = {same(k.policy): (k.qps, k.result) for k in known}

    def evaluate(policy: Policy) -> tuple[float, Optional[RunResult]]:
        key = same(policy)
        if key not in seen:
            seen[key] = _evaluate(backend, policy, target_ms, rel_tol, controller)
        return seen[key]

    def climb(candidates: Sequence[Policy]) -> tuple[Policy, float, Optional[RunResult]]:
        best: Optional[tuple[Policy, float, Optional[RunResult]]] = None
        misses = 0
        for policy in candidates:
            qps, result = evaluate(policy)
            tried.append((policy, qps))
            if progress is not None:
                progress(policy, qps)
            if best is None or qps > best[1]:
                best, misses = (policy, qps, result), 0
            elif qps < best[1]:
                misses += 1
                if patience is not None and misses > patience:
                    break
        assert best is not None
        return best

    if not batch_sizes:
        raise ValueError("DeepRecSched needs at least one batch size to try")
    policy, qps, result = climb([Policy(b) for b in batch_sizes])
    if backend.has_accelerator and thresholds:
        policy, qps, result = climb(
            [policy] + [Policy(policy.batch_size, t) for t in thresholds])
    return Tuned(policy, qps, result, tried)
