"""Hercules' first stage on the serving simulator: every schedule's latency-bounded throughput
on one server type, the search for the best, and the references it is measured against.

A :class:`Machine` is a server type as the simulator sees it: its :class:`ServerType` (cores,
memory), its CPU profile (:class:`~.profile.CpuProfile`), a GPU's latency curves (whole
queries: those at or above the offload threshold run on it, DeepRecSys's model; and the
dense part alone, :meth:`~recengine.models.RecModel.dense_part`, for ``dense="gpu"``), and
RecNMP's SLS curve (:class:`~recengine.nmp.SLSCurve`).

Where a part of every sub-request runs off the CPU, the instance waits for it, and the device
is one for the whole server, shared by the co-located instances
(:class:`~recengine.sched.DeviceStage`):

* ``dense="gpu"``: the instance runs the lookups (the profile's curve times its measured
  sparse share, :func:`~.profile.sparse_shares`), then the GPU runs the dense part (its
  dense-part curve: vectors copied over, dense layers, scores back), in the queue it shares
  with offloaded whole queries;
* ``sparse="nmp"``: RecNMP's DIMMs run the lookups first, one sub-request at a time (its
  ranks work on one batch together), then the instance runs the dense part (its curve times
  one less the sparse share). RecNMP multiplies the throughput of the host's memory system:
  a sub-request's lookups take the host's time for them with every core busy looking up,
  over the cores (the machine's lookup throughput at its busiest), scaled by RecNMP's time
  over the host's (:class:`~recengine.nmp.SLSCurve`). Without measured shares, the SLS
  share is the machine's ``nmp_sls_fraction``. (The device is a bound for large batches,
  which keep every rank busy; a small batch alone may leave ranks idle that a second one
  could use, so for small batches the model is pessimistic.)

An :class:`Evaluator` gives a schedule's latency-bounded throughput: the highest Poisson
arrival rate whose p95 meets the model's target with nothing shed, found by bisection
(:func:`~recengine.sched.max_qps`) over runs of :class:`~recengine.sched.SimulatedServer` with
one simulated worker per instance, each sub-request taking the profiled curve of that many
instances of that many threads. Its :meth:`~Evaluator.space` is the lattice Hercules searches:
instances (1 to the cores), threads per instance (the profiled counts), batch size, offload
threshold (with an accelerator), sparse placement (with RecNMP) and sharing, with
``instances x threads <= cores`` and the schedule's memory within the server's.

:func:`compare` runs, on one evaluator: the gradient search
(:func:`~.search.gradient_search`), the exhaustive grid (the oracle), DeepRecSched (one
single-thread instance per core, its batch-size then threshold climb, RecNMP for the sparse
part where the server has it) and the naive schedule
(:func:`~.schedule.naive`).

What the model leaves out: the GPU's host-side work under load (its curves are profiled on
an idle machine; on the real server its process shares the cores with the busy workers); the
GPU's memory (every schedule's dense layers fit an H200's); the lookups
on RecNMP and the dense part on the GPU in one schedule (no server type has both); a device
part overlapping another sub-request's on the same device (each device runs one at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

from ..sched import (
    BATCH_SIZES,
    THRESHOLDS,
    DeviceStage,
    LatencyCurve,
    SimulatedServer,
    deeprecsched,
    max_qps,
)
from ..workload import QuerySizes
from .profile import CpuProfile
from .provision import ServerType
from .schedule import DENSE, SHARING, Footprint, Schedule, naive
from .search import Point, SearchResult, Space, gradient_search, grid_search

__all__ = ["Comparison", "Evaluator", "Machine", "compare"]

#: The bisection's relative tolerance on a schedule's throughput: finer than the 2% the
#: search is judged by, so that the grid and the search compare real differences.
REL_TOL = 0.005


@dataclass(frozen=True)
class Machine:
    """A server type as the simulator sees it (see the module's docs): ``accelerator`` the
    GPU's whole-query curve, ``dense_accelerator`` its dense-part curve (``dense="gpu"``
    needs it and the profile's sparse shares), ``nmp_sls_fraction`` the SLS share of a CPU
    sub-request's time that RecNMP takes over where the profile has no measured shares."""

    server: ServerType
    cpu: CpuProfile
    accelerator: Optional[LatencyCurve] = None
    nmp: Optional[Any] = None  # recengine.nmp.SLSCurve
    nmp_sls_fraction: float = 0.79
    dense_accelerator: Optional[LatencyCurve] = None

    def __post_init__(self) -> None:
        if self.cpu.cores != self.server.cores:
            raise ValueError(f"server {self.server.name!r} has {self.server.cores} cores but "
                             f"its CPU profile has {self.cpu.cores}")
        if not 0 <= self.nmp_sls_fraction <= 1:
            raise ValueError(f"the SLS fraction must be in [0, 1], got {self.nmp_sls_fraction}")


def _distinct(batch_sizes: Sequence[int], thresholds: Sequence[int], smallest: int,
              largest: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The lattice's batch sizes and thresholds with the values that run alike made one: of
    the batch sizes at or above the largest query (each runs every query whole) the smallest;
    of the thresholds at or below the smallest query (each offloads every query) the largest;
    thresholds above the largest query are "never" (None, always in the lattice). A plateau
    of alike values would stop a climb that has to cross it.

    Example::

        >>> _distinct((32, 256, 512, 1024), (1, 16, 64, 128, 256, 512), 40, 300)
        ((32, 256, 512), (16, 64, 128, 256))
    """
    batches = sorted(set(batch_sizes))
    whole = [b for b in batches if b >= largest]
    out_b = tuple([b for b in batches if b < largest] + whole[:1])
    ts = sorted(set(thresholds))
    every = [t for t in ts if t <= smallest]
    out_t = tuple(every[-1:] + [t for t in ts if smallest < t <= largest])
    return out_b, out_t


class Evaluator:
    """Latency-bounded throughput of any schedule of ``machine`` (see the module's docs).

    Args:
        machine: the server type.
        target_ms: the p95 latency target.
        sizes, queries, seed: the query stream (lognormal sizes by default); each run lasts
            ``span_targets`` targets or ``queries`` queries, whichever is more.
        batch_sizes, thresholds: the lattice's batch sizes and offload thresholds.
        memory: the footprint checked against the server's memory (default: the profiled
            model's; the study passes the model at full scale).
        rel_tol: the bisection's tolerance on a throughput.

    The lattice keeps one of the values that run alike (:func:`_distinct`), and results are
    memoised per distinct schedule (:meth:`canonical`); :attr:`runs` counts the throughput
    searches run.
    """

    def __init__(self, machine: Machine, target_ms: float, sizes: Optional[QuerySizes] = None,
                 queries: int = 1000, seed: int = 0,
                 batch_sizes: Sequence[int] = BATCH_SIZES,
                 thresholds: Sequence[int] = THRESHOLDS, memory: Optional[Footprint] = None,
                 rel_tol: float = REL_TOL, span_targets: float = 10.0) -> None:
        if not target_ms > 0:
            raise ValueError(f"the latency target must be positive, got {target_ms}")
        if not batch_sizes:
            raise ValueError("the lattice needs at least one batch size")
        self.machine, self.target_ms = machine, target_ms
        self.sizes = QuerySizes.lognormal() if sizes is None else sizes
        self.queries, self.seed, self.rel_tol = queries, seed, rel_tol
        self.span_s = span_targets * target_ms / 1e3
        self.memory = machine.cpu.footprint if memory is None else memory
        stream = self._stream(machine.cpu.curve(1, 1), 1)
        self.largest = stream.largest_query()
        self.smallest = int(stream.draw_sizes(stream.max_queries).min())
        self.batch_sizes, self.thresholds = _distinct(batch_sizes, thresholds, self.smallest,
                                                      self.largest)
        self.runs = 0
        self._memo: dict[Schedule, float] = {}
        self._service: dict[tuple[int, int, str, str, str],
                            tuple[LatencyCurve, Optional[DeviceStage]]] = {}

    def _stream(self, curve: LatencyCurve, workers: int,
                stage: Optional[DeviceStage] = None) -> SimulatedServer:
        return SimulatedServer(curve, workers, self.machine.accelerator, self.sizes, self.queries,
                               self.seed, span_s=self.span_s, max_queries=50_000, stage=stage)

    def space(self) -> Space:
        """The lattice Hercules searches on this machine (see the module's docs)."""
        m = self.machine
        dims: dict[str, Sequence[Any]] = {
            "instances": tuple(range(1, m.server.cores + 1)),
            "threads": m.cpu.threads,
            "batch_size": self.batch_sizes,
        }
        if m.accelerator is not None:
            dims["offload_threshold"] = (*self.thresholds, None)  # None: never, the largest
        if m.nmp is not None:
            dims["sparse"] = ("cpu", "nmp")
        if m.dense_accelerator is not None and m.cpu.sparse_share:
            dims["dense"] = DENSE
        dims["sharing"] = SHARING
        return Space(dims, self.allowed)

    def allowed(self, point: Point) -> bool:
        """Whether a point is a schedule that fits the server: cores and memory."""
        try:
            s = self.schedule(point)
        except ValueError:  # not a schedule (RecNMP lookups with a GPU dense part)
            return False
        return (s.cores <= self.machine.server.cores
                and self.memory.of(s) <= self.machine.server.memory_gb * 2**30)

    @staticmethod
    def schedule(point: Point) -> Schedule:
        return Schedule(**point)

    def curve(self, schedule: Schedule) -> LatencyCurve:
        """The latency curve of the part of a sub-request the schedule's instances run."""
        return self.service(schedule)[0]

    def service(self, schedule: Schedule) -> tuple[LatencyCurve, Optional[DeviceStage]]:
        """How the schedule's sub-requests are served: the latency curve of the part its
        instances run, and the part a shared device runs (None: all on the instance); see
        the module's docs."""
        key = (schedule.instances, schedule.threads, schedule.sharing, schedule.sparse,
               schedule.dense)
        if key not in self._service:
            self._service[key] = self._split(schedule)
        return self._service[key]

    def _split(self, schedule: Schedule) -> tuple[LatencyCurve, Optional[DeviceStage]]:
        m = self.machine
        curve = m.cpu.curve(schedule.instances, schedule.threads, schedule.sharing)
        if schedule.dense == "gpu":
            if m.dense_accelerator is None:
                raise ValueError(f"server {m.server.name!r} has no GPU to run the dense part on")
            return m.cpu.split(curve)[0], DeviceStage(m.dense_accelerator, accelerator=True)
        if schedule.sparse != "nmp":
            return curve, None
        if m.nmp is None:
            raise ValueError(f"server {m.server.name!r} has no RecNMP")
        # The host's memory system at its busiest: every core running lookups at once, a
        # sub-request's lookups every lookups_ms / cores on the whole machine.
        busy = m.cpu.curve(m.cpu.cores, 1, "processes")
        if m.cpu.sparse_share:
            dense, lookups = m.cpu.split(curve)[1], m.cpu.split(busy)[0]
        else:
            dense = curve.scaled(max(1 - m.nmp_sls_fraction, 1e-9))
            lookups = busy.scaled(max(m.nmp_sls_fraction, 1e-9))
        # RecNMP serves them that much faster than the host's memory system does.
        on_nmp = m.nmp.on_cpu(lookups.scaled(1 / m.cpu.cores), 1.0)
        return dense, DeviceStage(on_nmp, first=True)

    def canonical(self, schedule: Schedule) -> Schedule:
        """The schedule that runs the same: a batch capped at the largest query, a threshold
        above it dropped."""
        thr = schedule.offload_threshold
        return replace(schedule, batch_size=min(schedule.batch_size, self.largest),
                       offload_threshold=None if thr is not None and thr > self.largest else thr)

    def qps(self, schedule: Schedule) -> float:
        """The schedule's latency-bounded throughput (queries/s; 0 when no rate meets the
        target)."""
        key = self.canonical(schedule)
        if key not in self._memo:
            if key.offload_threshold is not None and self.machine.accelerator is None:
                raise ValueError(f"server {self.machine.server.name!r} has no accelerator to "
                                 f"offload to")
            curve, stage = self.service(key)
            backend = self._stream(curve, key.instances, stage)
            policy = key.policy()
            self._memo[key] = max_qps(lambda q: backend.run(policy, q), self.target_ms,
                                      backend.capacity_hint(policy), self.rel_tol)[0]
            self.runs += 1
        return self._memo[key]

    def __call__(self, point: Point) -> float:
        return self.qps(self.schedule(point))


@dataclass
class Comparison:
    """One (model, server type): the search's best schedule and throughput against the
    grid's, DeepRecSched's and the naive schedule's (see :func:`compare`)."""

    search: SearchResult
    grid: Optional[SearchResult]
    deeprecsched: Schedule
    deeprecsched_qps: float
    deeprecsched_evaluations: int
    naive: Schedule
    naive_qps: float
    grid_size: int

    @property
    def gap(self) -> Optional[float]:
        """How far the search's throughput falls below the grid's (a fraction; None without
        the grid)."""
        if self.grid is None or self.grid.value <= 0:
            return None
        return 1 - self.search.value / self.grid.value


def compare(evaluator: Evaluator, tolerance: float = 0.0, grid: bool = True,
            progress: Callable[[str], None] = lambda m: None) -> Comparison:
    """The gradient search (within ``tolerance``, relative), the grid (unless ``grid`` is
    False), DeepRecSched and the naive schedule on one evaluator. Each search counts its own
    evaluations (distinct points it asked for), though the evaluator's memo spares re-running
    a schedule another search ran."""
    space = evaluator.space()
    machine = evaluator.machine
    progress(f"{machine.cpu.model} on {machine.server.name}: gradient search")
    start = naive(machine.server.cores, evaluator.largest)
    # The climb starts from the two layouts at the lattice's corners (not its centre, which
    # cost the 16-core profiles a third more evaluations and found nothing more):
    # one instance of every core (the naive schedule, whole queries as the lattice's largest
    # batch) and one single-thread instance per core (DeepRecSched's), each at the middle
    # batch size, no offload and the CPU sparse kernels.
    middle = evaluator.batch_sizes[len(evaluator.batch_sizes) // 2]
    corners = [start.to_dict() | {"batch_size": evaluator.batch_sizes[-1]},
               Schedule(machine.server.cores, 1, middle).to_dict()]
    starts = []
    for corner in corners:
        point = {k: corner[k] for k in space.names}
        for sharing in space.dims["sharing"]:
            if space.ok(space.index(point | {"sharing": sharing})):
                starts.append(point | {"sharing": sharing})
                break
    found = gradient_search(space, evaluator, starts=starts, tolerance=tolerance,
                            centre=False)
    size = space.size
    oracle = None
    if grid:
        progress(f"{machine.cpu.model} on {machine.server.name}: grid of {size} schedules")
        oracle = grid_search(space, evaluator)
    progress(f"{machine.cpu.model} on {machine.server.name}: DeepRecSched")
    drs, drs_qps, drs_evals = _deeprecsched(evaluator)
    return Comparison(found, oracle, drs, drs_qps, drs_evals, start, evaluator.qps(start), size)


def _deeprecsched(evaluator: Evaluator) -> tuple[Schedule, float, int]:
    """DeepRecSched on the machine: one single-thread instance per core (processes when they
    fit in memory, else threads), the sparse part on RecNMP where the server has it, its
    batch-size then threshold climb."""
    m = evaluator.machine
    cores = m.server.cores
    sharing = "processes"
    if not evaluator.allowed(Schedule(cores, 1, evaluator.batch_sizes[0],
                                      sharing="processes").to_dict()):
        sharing = "threads"
    sparse = "nmp" if m.nmp is not None else "cpu"
    base = Schedule(cores, 1, evaluator.batch_sizes[-1], sparse=sparse, sharing=sharing)
    curve, stage = evaluator.service(base)
    backend = evaluator._stream(curve, cores, stage)
    tuned = deeprecsched(backend, evaluator.target_ms,
                         sorted(evaluator.batch_sizes, reverse=True),
                         sorted(evaluator.thresholds, reverse=True), evaluator.rel_tol)
    p = tuned.policy
    schedule = Schedule(cores, 1, p.batch_size, p.offload_threshold, sparse=sparse,
                        sharing=sharing)
    return schedule, tuned.qps, len(tuned.tried)
