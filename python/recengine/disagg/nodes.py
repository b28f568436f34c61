"""The nodes of a deployment, as plain classes a :class:`~.deploy.Deployment` runs as Ray
actors (or a test runs in this process).

* :class:`MemoryNode`: one memory node's pieces of the tables (the sharding module's shard
  actor, loading its pieces from the table files), answering a query's work items with their
  pooled blocks, in order.
* :class:`ComputeNode`: the model's dense part, and an input pool; for each query it asks the
  memory nodes for the lookups (:class:`~.placement.MemoryPlan`), merges them and runs the
  dense layers. In a monolithic deployment it holds the whole model and looks up itself.

A compute node waits for its memory nodes under one deadline; a memory node that died or does
not answer is asked again on its next replica, and where none answers the query fails with
:class:`MemoryNodeUnavailableError` (never a hang, never a partial answer). A replica that died
is left out of the rotation until it answers a probe (Ray queues calls to an actor it is
restarting, so a query sent there would wait out the restart).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional, Sequence

import numpy as np

from ..shard.distributed import _ShardActor
from .placement import MemoryPlan, WorkItem

__all__ = ["ARCHITECTURES", "ComputeNode", "MemoryNode", "MemoryNodeUnavailableError",
           "QueryStats"]

#: How a deployment serves a model: every compute node holds the whole model
#: ("monolithic"), or compute nodes hold the dense part and memory nodes the tables
#: ("disaggregated").
ARCHITECTURES: tuple[str, ...] = ("monolithic", "disaggregated")

#: What a compute node reports for a query: ``(request_bytes, response_bytes, failovers)``,
#: the ids and offsets it sent to memory nodes, the pooled rows it got back, and how many
#: memory-node calls it had to send again to a replica.
QueryStats = tuple[int, int, int]


class MemoryNodeUnavailableError(RuntimeError):
    """Every replica of a memory node died, raised or did not answer in time."""

    def __init__(self, node: int, reason: str) -> None:
        super().__init__(f"memory node {node} is unavailable: {reason}")
        self.node, self.reason = node, reason

    def __reduce__(self) -> tuple[Any, tuple[int, str]]:  # back to the front end through Ray
        return (type(self), (self.node, self.reason))


class MemoryNode(_ShardActor):
    """One memory node: its pieces ``(table, piece, path, shape, rows, cols)`` loaded from the
    table files (memory-mapped, only its rows read)."""

    def pid(self) -> int:
        """This actor's process (a restarted actor has another)."""
        return os.getpid()

    def lookup_list(self, work: Sequence[WorkItem]) -> list[np.ndarray]:
        """Each work item's pooled block ``[bags, piece cols]``, in order."""
        return [self.tables[(t, p)].lookup(ids, offsets, weights=w, mode=mode,
                                           include_last_offset=True)
                for t, p, ids, offsets, w, mode in work]


class ComputeNode:
    """A compute node of ``architecture`` (:data:`ARCHITECTURES`).

    Args:
        build_args: :func:`recengine.models.build`'s arguments (every node builds the same
            weights from them).
        architecture: "monolithic" (the whole model here) or "disaggregated" (the dense part
            here, the tables on ``memory``).
        memory: per memory node, the handles of its replicas (disaggregated only).
        shard_plan: where the tables are (disaggregated only).
        threads: torch's and the core's threads here.
        pool_size, seed: the input pool queries are rows of (the same in every node).
        timeout_s: how long a query waits for its memory nodes.
    """

    def __init__(self, build_args: dict[str, Any], architecture: str,
                 memory: Optional[Sequence[Sequence[Any]]] = None, shard_plan: Any = None,
                 threads: int = 1, pool_size: int = 4096, seed: int = 0,
                 timeout_s: float = 10.0) -> None:
        import torch

        from .. import set_num_threads
        from ..models import build

        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, "
                             f"got {architecture!r}")
        torch.set_num_threads(threads)
        set_num_threads(threads)
        self.architecture = architecture
        self.model = build(**build_args)
        self.pool = self.model.sample_batch(pool_size, seed=seed)
        self.timeout_s = timeout_s
        self.memory = [list(r) for r in memory or []]
        self.plan: Optional[MemoryPlan] = None
        self._turn = 0
        # replicas seen dead: (memory node, replica) -> the probe sent to it (None: not yet)
        self._down: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()
        if architecture == "disaggregated":
            if shard_plan is None or len(self.memory) != shard_plan.num_shards:
                raise ValueError("a disaggregated compute node needs the plan and one list of "
                                 "replicas per memory node")
            self.plan = MemoryPlan(self.model, shard_plan)
            self.model.embeddings = None  # the tables live on the memory nodes
            self.model.sequence_tables = torch.nn.ModuleDict()

    def ready(self) -> str:
        return self.architecture

    def pid(self) -> int:
        """This actor's process (a restarted actor has another)."""
        return os.getpid()

    def infer(self, lo: int, n: int) -> QueryStats:
        """Serve pool rows ``lo:lo + n`` as one query."""
        return self._run(lo, n)[1]

    def scores(self, lo: int, n: int) -> np.ndarray:
        """The scores ``[n, T]`` of pool rows ``lo:lo + n`` (for checking results)."""
        return self._run(lo, n)[0].numpy()

    def _run(self, lo: int, n: int) -> tuple[Any, QueryStats]:
        import torch

        if not (0 <= lo and 1 <= n and lo + n <= len(self.pool)):
            raise IndexError(f"rows {lo}:{lo + n} are outside the pool of {len(self.pool)}")
        batch = self.pool.rows(lo, lo + n)
        with torch.inference_mode():
            if self.plan is None:
                return self.model(batch), (0, 0, 0)
            work, keys = self.plan.requests(batch)
            blocks, failovers = self._lookup(work)
            embedded = self.plan.assemble(n, keys, blocks)
            out = self.model.dense_part(embedded, batch.dense)
        got = sum(b.nbytes for bs in blocks.values() for b in bs)
        return out, (MemoryPlan.request_bytes(work), got, failovers)

    def _up(self, s: int, i: int) -> bool:
        """Whether replica ``i`` of memory node ``s`` is in the rotation: not seen dead, or
        since answered the probe sent to it (one probe at a time)."""
        import ray

        key = (s, i)
        with self._lock:
            if key not in self._down:
                return True
            probe = self._down[key]
            if probe is None:
                self._down[key] = self.memory[s][i].pid.remote()
                return False
        ready, _ = ray.wait([probe], timeout=0)
        if not ready:
            return False
        try:
            ray.get(ready[0])
        except Exception:  # died, restarting, or cancelled: the probe is a child of the
            # query that sent it, and the front end's cancel of that query at its deadline
            # cancels its children too. Still out; probe again on a later query.
            with self._lock:
                self._down[key] = None
            return False
        with self._lock:
            self._down.pop(key, None)
        return True

    def _lookup(self, work: dict[int, list[WorkItem]]
                ) -> tuple[dict[int, list[np.ndarray]], int]:
        """Each memory node's blocks, asking its replicas in turn (starting with this
        query's, skipping those seen dead while another is up) until one answers, all under
        one deadline."""
        import ray

        deadline = time.monotonic() + self.timeout_s
        self._turn += 1
        turn = self._turn  # this query's (other threads of the actor move self._turn on)
        tried: dict[int, set[int]] = {s: set() for s in work}
        pending: dict[Any, tuple[int, int]] = {}

        def ask(s: int) -> None:
            n = len(self.memory[s])
            order = [(turn + s + k) % n for k in range(n) if (turn + s + k) % n not in tried[s]]
            i = next((j for j in order if self._up(s, j)), order[0])
            tried[s].add(i)
            pending[self.memory[s][i].lookup_list.remote(work[s])] = (s, i)

        for s in work:
            ask(s)
        blocks: dict[int, list[np.ndarray]] = {}
        failovers = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1,
                                timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                for r in pending:
                    ray.cancel(r)
                late = sorted({s for s, _ in pending.values()})
                raise MemoryNodeUnavailableError(late[0], f"no answer within "
                                                 f"{self.timeout_s:g} s (waiting on {late})")
            s, i = pending.pop(ready[0])
            try:
                blocks[s] = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                with self._lock:
                    self._down.setdefault((s, i), None)
                if len(tried[s]) >= len(self.memory[s]):
                    raise MemoryNodeUnavailableError(
                        s, f"its {'replicas' if len(self.memory[s]) > 1 else 'actor'} died "
                           f"({type(e).__name__})") from e
                failovers += 1
                ask(s)
        return blocks, failovers
