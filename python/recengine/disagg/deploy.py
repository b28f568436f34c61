"""``Deployment``: a model served by Ray actors, monolithic or disaggregated, behind a front
end that accounts for every query.

A **monolithic** deployment runs ``compute_nodes`` actors that each hold the whole model. A
**disaggregated** one runs ``compute_nodes`` actors holding the dense part and
``memory_nodes`` x ``replicas`` actors holding the tables as the sharding planner placed them
(:class:`~.placement.MemoryPlan`); each query's lookups go from its compute node to the
memory nodes by Ray calls, one per memory node. Both run the same :class:`~.nodes.ComputeNode`
code, and the same queries (rows of one seeded input pool every node builds).

The front end (:meth:`Deployment.run`) offers queries at their arrival times (open loop),
each to the compute node with the fewest outstanding; where every live node already holds
``queue_capacity``, the query is **shed**. A query whose node died, or whose memory node had
no live replica, is sent again (to another compute node where one is up) after a short back
off, up to ``retries`` times (**retried**); after that, or past ``timeout_s``, it **failed**.
Every query ends served, shed or failed (:class:`DeployResult`). A compute node that dies is
taken out of the rotation until it answers again (Ray restarts actors up to
``max_restarts``); :meth:`kill` kills a node's actor, for failure tests and the study.

Example::

    >>> with Deployment("ncf", scale=0.01, architecture="disaggregated",
    ...                 compute_nodes=1, memory_nodes=2, num_cpus=2) as d:  # doctest: +SKIP
    ...     r = d.run(np.arange(50) * 0.01, np.full(50, 32))
    ...     r.served, r.shed, r.failed
    (50, 0, 0)
"""

from __future__ import annotations

import heapq
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..sched.result import RunResult
from ..shard.distributed import _ray as shard_ray
from .nodes import ARCHITECTURES, ComputeNode, MemoryNode
from .placement import MemoryPlan

__all__ = ["DeployResult", "Deployment"]

#: Query states in :attr:`DeployResult.status`.
SERVED, SHED, FAILED = 0, 1, 2


@dataclass
class DeployResult:
    """One run of the front end, query by query.

    ``latency_ms[i]`` is ``inf`` for a shed or failed query; ``status[i]`` is 0 served, 1
    shed, 2 failed; ``retried[i]`` whether it was sent more than once; ``done_s[i]`` when it
    ended (s after the run's start); ``errors`` the failed queries' reasons.
    ``request_bytes`` / ``response_bytes``: what the served queries' compute nodes sent to and
    got from memory nodes, in all. ``failovers``: memory-node calls answered by another
    replica.
    """

    latency_ms: np.ndarray
    status: np.ndarray
    retried: np.ndarray
    arrival_s: np.ndarray
    done_s: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    request_bytes: int = 0
    response_bytes: int = 0
    failovers: int = 0
    span_s: float = 0.0
    warmup: int = 0
    #: (node kind, index, killed at s, answering again at s or None) of each kill in the run
    outages: list[tuple[str, int, float, Optional[float]]] = field(default_factory=list)

    @property
    def served(self) -> int:
        return int((self.status == SERVED).sum())

    @property
    def shed(self) -> int:
        return int((self.status == SHED).sum())

    @property
    def failed(self) -> int:
        return int((self.status == FAILED).sum())

    @property
    def retried_served(self) -> int:
        """Queries served after being sent again."""
        return int((self.retried & (self.status == SERVED)).sum())

    @property
    def bytes_per_query(self) -> float:
        """Bytes between compute and memory nodes per served query."""
        return (self.request_bytes + self.response_bytes) / max(self.served, 1)

    def as_run(self) -> RunResult:
        """The run as the scheduler's :class:`~recengine.sched.RunResult` (for
        :func:`~recengine.sched.max_qps`)."""
        return RunResult(self.latency_ms, self.shed, 0, self.span_s, self.warmup,
                         failed=self.failed)

    def throughput(self, window_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Served queries per second in windows of ``window_s``: ``(window starts, qps)``."""
        end = max(float(self.done_s[np.isfinite(self.done_s)].max(initial=0.0)), window_s)
        edges = np.arange(0.0, end + window_s, window_s)
        served = self.done_s[self.status == SERVED]
        counts, _ = np.histogram(served, bins=edges)
        return edges[:-1], counts / window_s


def _ray() -> Any:
    return shard_ray("disaggregated serving")


class Deployment:
    """``model`` served by Ray actors (see the module's note).

    Args:
        model: a DeepRecInfra model name.
        scale, seed: :func:`recengine.models.build`'s (every node builds the same weights).
        architecture: "monolithic" or "disaggregated".
        compute_nodes: compute node actors.
        memory_nodes: memory nodes the tables are placed on (disaggregated only).
        replicas: actors per memory node, each holding its pieces.
        strategy: the sharding planner's strategy (:data:`recengine.shard.STRATEGIES`).
        threads, memory_threads: threads of each compute and memory node.
        pool_size: samples of the input pool queries are drawn from.
        timeout_s: a query's deadline at the front end (and a compute node's for its
            memory nodes).
        retries: how many times a query that failed on a dead node is sent again.
        queue_capacity: queries outstanding at one compute node at most.
        max_restarts: how many times Ray restarts a dead actor.
        concurrency: queries a compute node (and lookups a memory node) works on at once
            (threads of its actor): a disaggregated compute node waits on its memory nodes
            for most of a query, and takes other queries meanwhile.
        num_cpus: CPUs of the local Ray instance this starts (None: all).
        ready_timeout_s: how long to wait for the nodes to build their parts.

    Raises:
        ValueError: bad counts or architecture.
        RuntimeError: the nodes did not start in time.
    """

    def __init__(self, model: str, scale: float = 0.01, seed: int = 0,
                 architecture: str = "disaggregated", compute_nodes: int = 1,
                 memory_nodes: int = 1, replicas: int = 1, strategy: str = "load",
                 threads: int = 1, memory_threads: int = 1, pool_size: int = 4096,
                 timeout_s: float = 10.0, retries: int = 2, queue_capacity: int = 64,
                 max_restarts: int = 3, concurrency: int = 4, num_cpus: Optional[int] = None,
                 ready_timeout_s: float = 300.0) -> None:
        from ..models import build

        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, "
                             f"got {architecture!r}")
        for name, v, lo in (("compute_nodes", compute_nodes, 1), ("memory_nodes", memory_nodes, 1),
                            ("replicas", replicas, 1), ("threads", threads, 1),
                            ("memory_threads", memory_threads, 1), ("retries", retries, 0),
                            ("queue_capacity", queue_capacity, 1),
                            ("max_restarts", max_restarts, 0), ("pool_size", pool_size, 1),
                            ("concurrency", concurrency, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name, v, hi in (("compute_nodes", compute_nodes, 256),
                            ("memory_nodes", memory_nodes, 256), ("replicas", replicas, 8),
                            ("threads", threads, 1024), ("memory_threads", memory_threads, 1024),
                            ("concurrency", concurrency, 64)):
            if v > hi:
                raise ValueError(f"{name} must be at most {hi} (each is an actor process or "
                                 f"a thread), got {v}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        ray = _ray()
        self.architecture = architecture
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.queue_capacity = queue_capacity
        self.pool_size = pool_size
        reference = build(model, scale=scale, seed=seed)
        self.model_name = reference.name
        args: dict[str, Any] = reference.build_args  # type: ignore[assignment]
        self.build_args = dict(args)
        self.plan: Optional[MemoryPlan] = None
        if architecture == "disaggregated":
            self.plan = MemoryPlan.for_model(reference, memory_nodes, strategy=strategy)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        self._dir: Optional[tempfile.TemporaryDirectory[str]] = None
        self.memory: list[list[Any]] = []
        self.compute: list[Any] = []
        self._outages: list[list[Any]] = []
        try:
            if self.plan is not None:
                self.memory = self._start_memory(reference, replicas, memory_threads,
                                                 max_restarts, concurrency)
            del reference
            actor = ray.remote(ComputeNode).options(num_cpus=0, max_restarts=max_restarts,
                                                    max_task_retries=0,
                                                    max_concurrency=concurrency)
            self.compute = [actor.remote(self.build_args, architecture, self.memory,
                                         None if self.plan is None else self.plan.shard_plan,
                                         threads, pool_size, seed, self.timeout_s)
                            for _ in range(compute_nodes)]
            ray.get([c.ready.remote() for c in self.compute]
                    + [m.ready.remote() for r in self.memory for m in r],
                    timeout=ready_timeout_s)
        except Exception as e:
            self.close()
            if isinstance(e, (ValueError, ImportError)):
                raise
            raise RuntimeError(f"the deployment's nodes did not start: {e}") from e

    def _start_memory(self, model: Any, replicas: int, threads: int, max_restarts: int,
                      concurrency: int) -> list[list[Any]]:
        """Save the model's tables where every memory node can read them, and start each
        node's replicas on its pieces."""
        from ..shard.distributed import save_tables
        from ..table import EmbeddingTable

        ray = _ray()
        assert self.plan is not None
        self._dir = tempfile.TemporaryDirectory(prefix="recengine-disagg-")
        weights = [model._weight(t).detach().numpy() for t in range(len(model.tables))]
        paths = save_tables([EmbeddingTable(w) for w in weights], self._dir.name,
                            [f"t{t}" for t in range(len(weights))])
        actor = ray.remote(MemoryNode).options(num_cpus=0, max_restarts=max_restarts,
                                               max_task_retries=0, max_concurrency=concurrency)
        out = []
        for node, pieces in self.plan.pieces().items():
            spec = [(t, p, str(Path(paths[t]).resolve()), weights[t].shape, rows, cols)
                    for t, p, rows, cols in pieces]
            out.append([actor.remote(node, spec, threads) for _ in range(replicas)])
        return out

    # -- serving ---------------------------------------------------------------------------

    def scores(self, lo: int, n: int, node: int = 0) -> np.ndarray:
        """Compute node ``node``'s scores ``[n, T]`` of pool rows ``lo:lo + n``."""
        ray = _ray()
        return ray.get(self.compute[node].scores.remote(lo, n), timeout=self.timeout_s)

    def run(self, arrivals: Any, sizes: Any, warmup: float = 0.1, seed: int = 0,
            kill_at: Optional[tuple[float, str, int]] = None) -> DeployResult:
        """Offer query ``i`` of ``sizes[i]`` samples at ``arrivals[i]`` seconds (non-
        decreasing) and wait until every query is served, shed or failed.

        Args:
            arrivals, sizes: the stream (each size at most ``pool_size``).
            warmup: the share of first queries percentiles skip.
            seed: where in the pool each query's rows start.
            kill_at: ``(seconds, "compute" | "memory", node)``: kill that node's actor (the
                first replica of a memory node) that far into the run.

        Raises:
            ValueError: a bad stream or kill.
        """
        ray = _ray()
        arrivals = np.asarray(arrivals, dtype=np.float64)
        sizes = np.asarray(sizes)
        n = arrivals.size
        if sizes.shape != arrivals.shape:
            raise ValueError("arrivals and sizes must have the same length")
        if n and (np.any(np.diff(arrivals) < 0) or not np.isfinite(arrivals).all()
                  or arrivals[0] < 0):
            raise ValueError("arrivals must be finite, non-negative and non-decreasing")
        if n and (sizes.dtype.kind not in "iu" or sizes.min() < 1
                  or sizes.max() > self.pool_size):
            raise ValueError(f"sizes must be integers in [1, {self.pool_size}]")
        if kill_at is not None:
            self._node(kill_at[1], kill_at[2])  # checked before anything runs
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, self.pool_size - sizes + 1) if n else sizes
        latency = np.full(n, np.inf)
        status = np.full(n, -1, dtype=np.int8)
        retried = np.zeros(n, dtype=bool)
        done = np.full(n, np.nan)
        errors: dict[int, str] = {}
        res = DeployResult(latency, status, retried, arrivals.copy(), done, errors,
                           warmup=int(n * warmup))
        outstanding = [0] * len(self.compute)
        down: dict[int, Any] = {}  # compute node -> its pending ready() probe
        pending: dict[Any, tuple[int, int, int]] = {}  # ref -> (query, node, attempt)
        later: list[tuple[float, int, int, int]] = []  # (when, query, attempt, avoid)
        t0 = time.perf_counter()
        killed: Optional[list[Any]] = None

        def now() -> float:
            return time.perf_counter() - t0

        def send(i: int, attempt: int, avoid: int = -1) -> None:
            live = [k for k in range(len(outstanding)) if k not in down]
            if not live:
                finish(i, FAILED, "no compute node is up")
                return
            options = [k for k in live if k != avoid] or live
            k = min(options, key=lambda j: outstanding[j])
            if attempt == 0 and outstanding[k] >= self.queue_capacity:
                finish(i, SHED)
                return
            outstanding[k] += 1
            pending[self.compute[k].infer.remote(int(starts[i]), int(sizes[i]))] = (
                i, k, attempt)

        def finish(i: int, state: int, why: str = "") -> None:
            status[i] = state
            done[i] = now()
            if state == SERVED:
                latency[i] = (done[i] - arrivals[i]) * 1e3
            elif state == FAILED:
                errors[i] = why

        nxt = 0
        while nxt < n or pending or later:
            t = now()
            if kill_at is not None and killed is None and t >= kill_at[0]:
                old = self.kill(kill_at[1], kill_at[2])
                killed = [kill_at[1], kill_at[2], t, None, self._node(*kill_at[1:]).pid.remote(),
                          old]
            while nxt < n and arrivals[nxt] <= t:
                send(nxt, 0)
                nxt += 1
            while later and later[0][0] <= t:
                _, i, attempt, avoid = heapq.heappop(later)
                if t - arrivals[i] > self.timeout_s:
                    finish(i, FAILED, errors.get(i, "") + "; out of time")
                else:
                    send(i, attempt, avoid)
            for i_ref, (i, k, _) in list(pending.items()):
                if t - arrivals[i] > self.timeout_s:  # past its deadline: give up on it
                    ray.cancel(i_ref)
                    del pending[i_ref]
                    outstanding[k] -= 1
                    finish(i, FAILED, f"no answer within {self.timeout_s:g} s")
            self._probe(down, killed, now)
            waits = [0.02]
            if nxt < n:
                waits.append(max(float(arrivals[nxt]) - t, 0.0))
            if later:
                waits.append(max(later[0][0] - t, 0.0))
            refs = list(pending) + list(down.values())
            if not refs:
                time.sleep(min(waits))
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=min(waits))
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref not in pending:
                    continue  # a probe: _probe reads it
                i, k, attempt = pending.pop(ref)
                outstanding[k] -= 1
                try:
                    q, r, f = ray.get(ref)
                except Exception as e:  # the node died, or its memory nodes did
                    dead = isinstance(e, ray.exceptions.RayActorError)
                    if dead and k not in down:
                        down[k] = self.compute[k].ready.remote()
                    why = _reason(e)
                    if attempt < self.retries and now() - arrivals[i] < self.timeout_s:
                        retried[i] = True
                        errors[i] = why
                        heapq.heappush(later, (now() + 0.02 * 2**attempt, i, attempt + 1,
                                               k if dead else -1))
                    else:
                        finish(i, FAILED, why)
                    continue
                res.request_bytes += q
                res.response_bytes += r
                res.failovers += f
                errors.pop(i, None)
                finish(i, SERVED)
        res.span_s = float(arrivals[-1]) if n else 0.0
        if killed is not None:
            self._probe(down, killed, now, wait=True)
            res.outages.append((killed[0], killed[1], killed[2], killed[3]))
        assert (status >= 0).all(), "every query is served, shed or failed"
        return res

    def _probe(self, down: dict[int, Any], killed: Optional[list[Any]],
               clock: Callable[[], float], wait: bool = False) -> None:
        """Put answering compute nodes back in the rotation, and note when a killed node
        answers again (waiting up to ``timeout_s`` for it with ``wait``)."""
        ray = _ray()
        for k, ref in list(down.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                try:
                    ray.get(ref)
                    del down[k]
                except Exception:  # still restarting (or gone for good): ask again
                    down[k] = self.compute[k].ready.remote()
        until = clock() + (self.timeout_s if wait else 0.0)
        while killed is not None and killed[3] is None:
            ready, _ = ray.wait([killed[4]], timeout=max(until - clock(), 0.0))
            if not ready:
                return
            try:
                back = ray.get(killed[4]) != killed[5]  # a new process answers
            except Exception:  # it went to the dying actor, or the actor is gone for good
                back = False
            if back:
                killed[3] = clock()
                return
            killed[4] = self._node(killed[0], killed[1]).pid.remote()
            if not wait or clock() >= until:
                return
            time.sleep(0.05)

    def _node(self, kind: str, index: int) -> Any:
        if kind == "compute":
            nodes = self.compute
        elif kind == "memory":
            nodes = [r[0] for r in self.memory]
        else:
            raise ValueError(f"a node is 'compute' or 'memory', got {kind!r}")
        if not 0 <= index < len(nodes):
            raise ValueError(f"there is no {kind} node {index} (this deployment has "
                             f"{len(nodes)})")
        return nodes[index]

    def kill(self, kind: str, index: int) -> int:
        """Kill compute or memory node ``index``'s actor (a memory node's first replica); Ray
        restarts it (up to ``max_restarts``). Returns the killed process's id (the node is
        back when its ``pid()`` answers another).

        Raises:
            ValueError: no such node.
        """
        ray = _ray()
        node = self._node(kind, index)
        pid = int(ray.get(node.pid.remote(), timeout=self.timeout_s))
        ray.kill(node, no_restart=False)
        return pid

    def close(self) -> None:
        """Stop every actor (and the local Ray instance, if this started it)."""
        ray = _ray()
        for a in list(self.compute) + [m for r in self.memory for m in r]:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self.compute, self.memory = [], []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(e: BaseException) -> str:
    """A failed call's cause in a line."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
