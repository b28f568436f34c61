"""A Hercules schedule: how one server runs one model.

A :class:`Schedule` co-locates ``instances`` model instances on a server, each running its
sub-requests with ``threads`` intra-op threads (``instances x threads`` cores busy at most),
splits every query into sub-requests of at most ``batch_size`` items (DeepRecSched's knob),
sends queries of ``offload_threshold`` items or more whole to the accelerator (``None``:
never), runs the sparse part (the embedding lookups) on the CPU's kernels or on RecNMP's
near-memory units (``sparse``) and the dense part (:meth:`~recengine.models.RecModel.dense_part`:
the MLPs, interactions, attention) on the CPU or on the GPU (``dense``, for every sub-request
the CPU serves; the GPU then runs the dense part of sub-requests whose lookups ran on the
CPU), and holds the instances either as threads of one process
sharing one read-only copy of the tables (``sharing="threads"``) or as processes with a copy
each (``"processes"``). On the real server the instances are :class:`~recengine.serving.Server`'s
workers: ``Server(model, workers=instances, threads_per_worker=threads, processes=...)``.

Example::

    >>> s = Schedule(instances=4, threads=2, batch_size=64, sharing="processes")
    >>> s.cores, s.policy().describe(), s.copies
    (8, 'batch 64, offload never', 4)
    >>> naive(16, largest_query=300).describe(largest_query=300)
    '1 x 16 threads, batch 300 (whole queries), cpu sparse, threads'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..sched.result import Policy

__all__ = ["DENSE", "SHARING", "SPARSE", "Footprint", "Schedule", "footprint", "naive", "pss_bytes"]

#: Where the sparse part runs: recengine's CPU kernels, or RecNMP's near-memory units.
SPARSE: tuple[str, ...] = ("cpu", "nmp")
#: Where the dense part of a sub-request runs: on its CPU instance, or on the GPU.
DENSE: tuple[str, ...] = ("cpu", "gpu")
#: How co-located instances are held: threads sharing one copy of the tables, or processes.
SHARING: tuple[str, ...] = ("threads", "processes")


@dataclass(frozen=True)
class Schedule:
    """One point of Hercules' scheduling space (see the module's docs)."""

    instances: int
    threads: int
    batch_size: int
    offload_threshold: Optional[int] = None
    sparse: str = "cpu"
    sharing: str = "threads"
    dense: str = "cpu"

    def __post_init__(self) -> None:
        if self.instances < 1 or self.threads < 1:
            raise ValueError(f"a schedule needs at least one instance of one thread, got "
                             f"{self.instances} x {self.threads}")
        if self.sparse not in SPARSE:
            raise ValueError(f"the sparse part runs on one of {', '.join(SPARSE)}, got "
                             f"{self.sparse!r}")
        if self.dense not in DENSE:
            raise ValueError(f"the dense part runs on one of {', '.join(DENSE)}, got "
                             f"{self.dense!r}")
        if self.sparse == "nmp" and self.dense == "gpu":
            raise ValueError("the lookups on RecNMP and the dense part on the GPU together "
                             "are not modelled")
        if self.sharing not in SHARING:
            raise ValueError(f"instances are held as one of {', '.join(SHARING)}, got "
                             f"{self.sharing!r}")
        self.policy()  # checks the batch size and threshold

    @property
    def cores(self) -> int:
        """Cores the schedule keeps busy at most: instances x threads."""
        return self.instances * self.threads

    @property
    def copies(self) -> int:
        """Copies of the model's tables in memory: one shared, or one per process."""
        return self.instances if self.sharing == "processes" else 1

    def policy(self) -> Policy:
        """The query policy each sub-request follows (batch size, offload threshold)."""
        return Policy(self.batch_size, self.offload_threshold)

    def describe(self, largest_query: Optional[int] = None) -> str:
        whole = (" (whole queries)" if largest_query is not None
                 and self.batch_size >= largest_query else "")
        off = "" if self.offload_threshold is None else f", offload >= {self.offload_threshold}"
        dense = ", gpu dense" if self.dense == "gpu" else ""
        return (f"{self.instances} x {self.threads} threads, batch {self.batch_size}{whole}"
                f"{off}, {self.sparse} sparse{dense}, {self.sharing}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        return cls(**d)


def naive(cores: int, largest_query: int) -> Schedule:
    """The naive schedule Hercules is measured against: one instance on every core, each query
    run whole (a batch of the largest query), on the CPU.

    Example::

        >>> naive(8, 256).describe()
        '1 x 8 threads, batch 256, cpu sparse, threads'
    """
    return Schedule(1, cores, largest_query)


@dataclass(frozen=True)
class Footprint:
    """The bytes a model holds: its embedding tables and its dense layers' weights, and what
    one serving process holds besides them (``process_bytes``: its interpreter, torch and
    buffers; :func:`~.profile.profile_cpu` measures it, 0 where unknown)."""

    table_bytes: int
    dense_bytes: int
    process_bytes: int = 0

    def of(self, schedule: Schedule) -> int:
        """Bytes a schedule holds: one copy of the model and one process's own bytes per
        process (instances as threads share one of each). A server process that only
        dispatches (and on recengine's real server, built the model) is not counted.

        Example::

            >>> f = Footprint(table_bytes=100, dense_bytes=10, process_bytes=5)
            >>> f.of(Schedule(4, 1, 32)), f.of(Schedule(4, 1, 32, sharing="processes"))
            (115, 460)
        """
        return schedule.copies * (self.table_bytes + self.dense_bytes + self.process_bytes)

    def scaled(self, factor: float) -> Footprint:
        """The footprint with tables ``factor`` times as many rows (the rest unchanged)."""
        return Footprint(int(self.table_bytes * factor), self.dense_bytes, self.process_bytes)


def footprint(model: Any) -> Footprint:
    """A built model's (:func:`recengine.models.build`) table and dense bytes, from its
    parameters: tables are those under ``embeddings`` and ``sequence_tables``.

    Example::

        >>> import recengine.models as rm
        >>> f = footprint(rm.build("ncf", scale=0.01))
        >>> f.table_bytes > f.dense_bytes > 0
        True
    """
    tables = dense = 0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        if name.split(".", 1)[0] in ("embeddings", "sequence_tables"):
            tables += size
        else:
            dense += size
    return Footprint(tables, dense)


def pss_bytes(pid: int) -> Optional[int]:
    """A process's proportional set size (its pages, shared ones split among the processes
    that map them) from ``/proc/<pid>/smaps_rollup``; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
