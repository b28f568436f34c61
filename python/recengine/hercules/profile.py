"""What Hercules' simulator needs to know of one model on one server's CPU: sub-request latency
curves that carry the contention of co-located instances.

A :class:`CpuProfile` holds three families of curves, each profiled through the real server
(:meth:`~recengine.serving.Server.profile`: queries served at a fraction of the workers'
capacity, the time a sub-request held its worker):

* ``alone``: one instance with ``t`` intra-op threads, for each profiled ``t``;
* ``processes``: ``k`` single-thread worker processes busy at once, for each profiled ``k``
  (the cores slowing each other down: memory bandwidth, caches, clock, and each process's
  hand-over to and from the server);
* ``shared``: ``k`` single-thread worker threads of one process (the same, plus the
  interpreter lock the threads share).

A schedule of ``i`` instances of ``t`` threads is served at (:meth:`CpuProfile.curve`)::

    alone[t] x processes[i t] / alone[1]                      (processes)
    alone[t] x processes[i t] / alone[1] x shared[i] / processes[i]    (threads)

per batch size: the slowdown of ``i t`` busy cores, and for threads the interpreter lock's
extra slowdown at ``i`` concurrent forwards; both linear in the busy count between profiled
counts. Both are exact at every profiled single-thread point; the cross terms are the model's
assumption, which the study checks against the real server.

Example::

    >>> from recengine.sched import LatencyCurve
    >>> one = LatencyCurve((1, 64), (1.0, 8.0))
    >>> p = CpuProfile("m", 4, threads=(1, 4), alone=(one, one.scaled(0.5)), busy=(1, 4),
    ...                processes=(one, one.scaled(1.5)), shared=(one, one.scaled(3.0)))
    >>> p.curve(4, 1, "processes").ms, p.curve(4, 1, "threads").ms, p.curve(1, 4, "threads").ms
    ((1.5, 12.0), (3.0, 24.0), (0.75, 6.0))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..sched.latency import LatencyCurve
from .schedule import Footprint, footprint, pss_bytes

__all__ = ["BATCHES", "CpuProfile", "counts", "profile_cpu", "sparse_shares"]

#: The batch sizes a CPU profile times: DeepRecSched's sizes, and smaller ones for the
#: remainders of queries split into sub-requests.
BATCHES: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512, 1024)


def counts(cores: int) -> tuple[int, ...]:
    """The thread and busy-core counts profiled on ``cores`` cores: powers of two below it,
    and ``cores`` itself.

    Example::

        >>> counts(12), counts(1)
        ((1, 2, 4, 8, 12), (1,))
    """
    if cores < 1:
        raise ValueError(f"a server needs at least one core, got {cores}")
    out = [1 << k for k in range(cores.bit_length()) if 1 << k < cores]
    return (*out, cores)


@dataclass(frozen=True)
class CpuProfile:
    """One model's sub-request latency curves on one server of ``cores`` cores (see the
    module's docs), and the bytes the model holds (``footprint``, at the profiled scale)."""

    model: str
    cores: int
    threads: tuple[int, ...]
    alone: tuple[LatencyCurve, ...]
    busy: tuple[int, ...]
    processes: tuple[LatencyCurve, ...]
    shared: tuple[LatencyCurve, ...]
    footprint: Footprint = field(default_factory=lambda: Footprint(0, 0))
    label: str = ""
    #: Per batch size, the share of one single-thread forward spent in the embedding lookups
    #: (:func:`sparse_shares`); empty when not profiled.
    sparse_share: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"a server needs at least one core, got {self.cores}")
        for name, ks, curves in (("threads", self.threads, self.alone),
                                 ("busy", self.busy, self.processes),
                                 ("busy", self.busy, self.shared)):
            if len(ks) != len(curves) or not ks:
                raise ValueError(f"a CPU profile needs one curve per count of {name!r} (>= 1)")
            if ks[0] < 1 or any(a >= b for a, b in zip(ks, ks[1:])) or ks[-1] > self.cores:
                raise ValueError(f"{name} counts must increase within 1..{self.cores}, got "
                                 f"{list(ks)}")
        if 1 not in self.threads:
            raise ValueError("a CPU profile needs the curve of one instance of one thread")
        first = self.alone[0]
        if any(c.batches != first.batches
               for c in (*self.alone, *self.processes, *self.shared)):
            raise ValueError("every curve of a CPU profile must share its batch sizes")
        if self.sparse_share and (len(self.sparse_share) != len(first.batches)
                                  or not all(0 <= x <= 1 for x in self.sparse_share)):
            raise ValueError("the sparse shares must be one fraction in [0, 1] per batch size")

    def split(self, curve: LatencyCurve) -> tuple[LatencyCurve, LatencyCurve]:
        """``curve`` (one of this profile's, or one derived from it) cut in two by the sparse
        shares: its embedding lookups and its dense part, per batch size.

        Raises:
            ValueError: the profile has no sparse shares.
        """
        if not self.sparse_share:
            raise ValueError(f"the CPU profile of {self.model} has no sparse shares "
                             f"(profile it again)")
        share = np.asarray(self.sparse_share)
        ms = np.asarray(curve.ms)
        # A part that takes nothing takes a nanosecond: a curve's latencies are positive.
        return (LatencyCurve(curve.batches, tuple(float(x) for x in np.maximum(ms * share, 1e-6)),
                             f"{curve.label} (lookups)", curve.interpolation),
                LatencyCurve(curve.batches,
                             tuple(float(x) for x in np.maximum(ms * (1 - share), 1e-6)),
                             f"{curve.label} (dense part)", curve.interpolation))

    def _slowdown(self, curves: Sequence[LatencyCurve], busy: int) -> np.ndarray:
        """Per batch size, ``curves`` at ``busy`` busy workers over one instance alone, linear
        in the busy count between profiled counts (the end counts' outside them)."""
        base = np.asarray(self.alone[self.threads.index(1)].ms)
        ratios = np.array([np.asarray(c.ms) / base for c in curves])  # [busy, batches]
        return np.array([np.interp(busy, self.busy, ratios[:, j])
                         for j in range(ratios.shape[1])])

    def curve(self, instances: int, threads: int, sharing: str = "threads") -> LatencyCurve:
        """The sub-request latency curve of ``instances`` instances of ``threads`` threads
        busy at once, held as ``sharing`` (``"threads"`` or ``"processes"``); ``threads`` must
        be a profiled count."""
        if threads not in self.threads:
            raise ValueError(f"{threads} threads were not profiled (profiled: "
                             f"{list(self.threads)})")
        if instances < 1 or instances * threads > self.cores:
            raise ValueError(f"{instances} x {threads} threads do not fit {self.cores} cores")
        base = np.asarray(self.alone[self.threads.index(threads)].ms)
        ms = base * self._slowdown(self.processes, instances * threads)
        if sharing == "threads":
            ms = ms * self._slowdown(self.shared, instances) / self._slowdown(self.processes,
                                                                             instances)
        elif sharing != "processes":
            raise ValueError(f"sharing is 'threads' or 'processes', got {sharing!r}")
        first = self.alone[0]
        return LatencyCurve(first.batches, tuple(float(m) for m in ms),
                            f"{self.model}: {instances} x {threads} threads ({sharing})",
                            first.interpolation)

    def to_dict(self, spread: bool = False) -> dict[str, Any]:
        """JSON values; the curves' spreads only with ``spread`` (the simulator serves every
        sub-request at its curve's median, and the spreads are most of the bytes)."""
        def curves(cs: Sequence[LatencyCurve]) -> list[dict[str, Any]]:
            return [(c if spread else LatencyCurve(c.batches, c.ms, c.label, c.interpolation))
                    .to_dict() for c in cs]

        return {"model": self.model, "cores": self.cores, "threads": list(self.threads),
                "alone": curves(self.alone), "busy": list(self.busy),
                "processes": curves(self.processes), "shared": curves(self.shared),
                "table_bytes": self.footprint.table_bytes,
                "dense_bytes": self.footprint.dense_bytes,
                "process_bytes": self.footprint.process_bytes, "label": self.label,
                "sparse_share": list(self.sparse_share)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CpuProfile:
        """From :meth:`to_dict`'s form."""
        curves = {k: tuple(LatencyCurve.from_dict(c) for c in d[k])
                  for k in ("alone", "processes", "shared")}
        return cls(str(d["model"]), int(d["cores"]), tuple(int(t) for t in d["threads"]),
                   curves["alone"], tuple(int(k) for k in d["busy"]), curves["processes"],
                   curves["shared"], Footprint(int(d.get("table_bytes", 0)),
                                               int(d.get("dense_bytes", 0)),
                                               int(d.get("process_bytes", 0))),
                   str(d.get("label", "")),
                   tuple(float(x) for x in d.get("sparse_share", ())))


def profile_cpu(model: Any, cores: int, threads: Optional[Sequence[int]] = None,
                busy: Optional[Sequence[int]] = None, batches: Sequence[int] = BATCHES,
                load: float = 0.9, span_s: float = 0.25, query_items: int = 164,
                distribution: str = "uniform", seed: int = 0, processes: bool = True,
                status: Callable[[str], None] = lambda m: None) -> CpuProfile:
    """Profile a built model (:func:`recengine.models.build`) on this machine as a server of
    ``cores`` cores (at most this machine's): one instance at each of ``threads`` (default
    :func:`counts`), and ``busy`` single-thread workers at once (default the same counts) as
    threads of this process and as worker processes (``processes=False`` leaves processes
    out: their curves are then the threads', and the two ways of holding instances are not
    told apart). Each curve is :meth:`~recengine.serving.Server.profile` at ``load`` of the
    workers' capacity for about ``span_s`` seconds a batch size, on queries of about
    ``query_items`` items. The single worker process's proportional set size less the
    model's bytes is the footprint's ``process_bytes`` (0 without processes).

    Example::

        >>> import recengine.models as rm
        >>> p = profile_cpu(rm.build("ncf", scale=0.01), 1, batches=(1, 8), span_s=0.0,
        ...                 processes=False)
        >>> p.threads, p.busy, p.alone[0].batches
        ((1,), (1,), (1, 8))
    """
    from ..serving import Server

    threads = counts(cores) if threads is None else tuple(sorted(set(threads)))
    busy = counts(cores) if busy is None else tuple(sorted(set(busy)))
    name = str(getattr(model, "name", "") or (getattr(model, "build_args", None) or {})
               .get("name", "model"))

    model_bytes = footprint(model)
    own: list[int] = []  # a worker process's bytes besides the model's

    def run(workers: int, per_worker: int, in_processes: bool) -> LatencyCurve:
        kind = "processes" if in_processes else "threads"
        status(f"{name}: profiling {workers} worker {kind} of {per_worker} thread(s)")
        with Server(model, workers=workers, threads_per_worker=per_worker, seed=seed,
                    distribution=distribution, processes=in_processes) as server:
            # Two queries at least: the span and eight sub-requests a worker bound the run
            # (the default twenty queries of one-item sub-requests took most of a profile).
            curve = server.profile(tuple(batches), load=load, span_s=span_s, queries=2,
                                   query_items=query_items)
            if in_processes and workers == 1 and server.worker_pids[0]:
                pss = pss_bytes(server.worker_pids[0])
                if pss is not None:
                    own.append(max(pss - model_bytes.table_bytes - model_bytes.dense_bytes, 0))
            return curve

    status(f"{name}: timing the lookups against whole forwards")
    shares = sparse_shares(model, batches, seed=seed, distribution=distribution)
    alone = {t: run(1, t, False) for t in threads}
    shared = tuple(alone[1] if k == 1 and 1 in alone else run(k, 1, False) for k in busy)
    procs = tuple(run(k, 1, True) for k in busy) if processes else shared
    return CpuProfile(name, cores, threads, tuple(alone[t] for t in threads), busy, procs,
                      shared, Footprint(model_bytes.table_bytes, model_bytes.dense_bytes,
                                        own[0] if own else 0), f"{name} on {cores} cores",
                      shares)


def sparse_shares(model: Any, batches: Sequence[int] = BATCHES, repeat: int = 5,
                  seed: int = 0, distribution: str = "uniform") -> tuple[float, ...]:
    """Per batch size, the share of a single-thread forward of a built model spent in its
    embedding lookups (:meth:`~recengine.models.RecModel.embed`): the median lookup time over
    the median forward time, ``repeat`` runs of each after one untimed, alternating (so a
    slow stretch of the machine falls on both), in this process on one thread: what stays on
    the CPU when the dense part runs on a GPU, and what RecNMP takes over.

    Example::

        >>> import recengine.models as rm
        >>> s = sparse_shares(rm.build("rmc1", scale=0.01), batches=(8, 64), repeat=1)
        >>> len(s), all(0 < x <= 1 for x in s)
        (2, True)
    """
    import torch

    from ..bench import _Threads

    pool = model.sample_batch(max(batches), distribution=distribution, seed=seed)
    shares = []
    with _Threads(1, torch):
        with torch.inference_mode():
            for b in batches:
                batch = pool.rows(0, b)
                times: tuple[list[float], list[float]] = ([], [])
                for k in range(repeat + 1):
                    for run, out in ((model.embed, times[0]), (model, times[1])):
                        t0 = time.perf_counter()
                        run(batch)
                        if k:
                            out.append(time.perf_counter() - t0)
                lookups, whole = (float(np.median(t)) for t in times)
                shares.append(min(lookups / max(whole, 1e-9), 1.0))
    return tuple(shares)
