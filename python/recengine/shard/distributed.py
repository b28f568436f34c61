"""``RayShardedEmbedding``: one Ray actor per shard, each holding its pieces of the tables.

The driver routes a batch with the core's router (indices are checked there), sends each
involved shard one call with its shares, waits for all of them under one deadline, and merges
the pooled blocks with the core. Each actor loads its own pieces from the table files (memory-
mapped, only its rows read), so no table passes through the driver. Ray (``pip install
"recengine[shard]"``) is the distributed engine: a local Ray instance by default, an existing
cluster when given its address.

A shard that dies or does not answer within ``timeout_s`` raises
:class:`ShardUnavailableError`; with ``max_restarts`` > 0 Ray restarts a dead actor, which
loads its pieces again, and the call is retried on it (it still has to answer within the
deadline). A lookup never hangs and never returns a partial output.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..table import EmbeddingTable
from .plan import ShardPlan

__all__ = ["RayShardedEmbedding", "ShardUnavailableError", "save_tables"]

PathLike = Union[str, "os.PathLike[str]"]


class ShardUnavailableError(RuntimeError):
    """A shard's actor died, raised, or did not answer in time; ``shard`` says which."""

    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(f"shard {shard} is unavailable: {reason}")
        self.shard = shard


def save_tables(tables: Sequence[EmbeddingTable], directory: PathLike,
                names: Sequence[str]) -> list[Path]:
    """Write each table to ``directory/<name>.safetensors`` (the layout
    :class:`RayShardedEmbedding` reads); returns the paths.

    Example::

        >>> t0 = recengine.EmbeddingTable.random(10, 4)  # doctest: +SKIP
        >>> save_tables([t0], "tables", ["t0"])  # doctest: +SKIP
        [PosixPath('tables/t0.safetensors')]
    """
    if len(tables) != len(names):
        raise ValueError(f"{len(tables)} tables but {len(names)} names")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, name in zip(tables, names):
        path = out / f"{name}.safetensors"
        t.save(path, name="weight")
        paths.append(path)
    return paths


class _ShardActor:
    """One shard: its pieces as owned tables, keyed by ``(table, piece)``."""

    def __init__(self, shard: int, pieces: list[tuple[int, int, str, tuple[int, int],
                                                       tuple[int, int], tuple[int, int]]],
                 threads: int) -> None:
        import recengine

        recengine.set_num_threads(threads)
        self.shard = shard
        self.tables: dict[tuple[int, int], EmbeddingTable] = {}
        for t, p, path, shape, rows, cols in pieces:
            # Checked here too: the file this node reads may not be the one the driver saw.
            self.tables[(t, p)] = _load_checked(path, shape).slice(rows, cols)
        self._cpu0 = time.process_time()

    def ready(self) -> int:
        return self.shard

    def lookup(self, work: list[tuple[int, int, np.ndarray, np.ndarray, Optional[np.ndarray],
                                      str]]) -> dict[tuple[int, int], np.ndarray]:
        return {(t, p): self.tables[(t, p)].lookup(ids, offsets, weights=w, mode=mode,
                                                   include_last_offset=True)
                for t, p, ids, offsets, w, mode in work}

    def cpu_seconds(self) -> float:
        """CPU time this actor's process has used since it loaded its pieces."""
        return time.process_time() - self._cpu0


def _load_checked(path: str, shape: tuple[int, int]) -> EmbeddingTable:
    """The table at ``path`` (memory-mapped), which must have the plan's ``shape``."""
    table = EmbeddingTable.load(path)
    if table.shape != tuple(shape):
        raise ValueError(f"{path} holds a {table.shape[0]} x {table.shape[1]} table but the "
                         f"plan's is {shape[0]} x {shape[1]}")
    return table


def _ray(purpose: str = "the distributed backend") -> Any:
    """Ray, or an ImportError saying ``purpose`` needs it and how to install it."""
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f'{purpose} needs Ray: pip install "recengine[shard]"') from e
    return ray


class RayShardedEmbedding:
    """The tables of ``plan`` served by one Ray actor per shard (see the module's note).

    Args:
        plan: a :class:`~recengine.shard.ShardPlan`.
        tables_path: a directory holding ``<table name>.safetensors`` for every table of the
            plan (:func:`save_tables` writes it); every actor must be able to read it.
        address: a Ray cluster's address; None starts (or reuses) a local Ray instance.
        timeout_s: how long a lookup waits for all its shards before raising
            :class:`ShardUnavailableError`.
        max_restarts: how many times Ray restarts a dead shard actor (0: a dead shard stays
            down and its lookups fail fast).
        threads_per_shard: the core's threads in each actor.
        num_cpus: CPUs of the local Ray instance this starts (None: all).
        ready_timeout_s: how long to wait for the actors to load their pieces.

    Example::

        >>> emb = RayShardedEmbedding(p, "tables", timeout_s=5.0)  # doctest: +SKIP
        >>> out = emb.lookup(indices, lengths=lengths)  # doctest: +SKIP
        >>> emb.close()  # doctest: +SKIP
    """

    def __init__(self, plan: ShardPlan, tables_path: PathLike, *, address: Optional[str] = None,
                 timeout_s: float = 30.0, max_restarts: int = 0, threads_per_shard: int = 1,
                 num_cpus: Optional[int] = None, ready_timeout_s: float = 120.0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        ray = _ray()
        root = Path(tables_path)
        missing = [t.name for t in plan.tables
                   if not (root / f"{t.name}.safetensors").is_file()]
        if missing:
            raise FileNotFoundError(f"{root} lacks {', '.join(f'{m}.safetensors' for m in missing)}"
                                    " (save_tables writes them)")
        for t in plan.tables:  # (mapped, not read: a header check)
            _load_checked(str(root / f"{t.name}.safetensors"), (t.num_rows, t.dim))
        self.plan = plan
        self.timeout_s = float(timeout_s)
        self._router = plan.router()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _check_reachable(address)
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        actor_class = ray.remote(_ShardActor).options(
            num_cpus=0, max_restarts=max_restarts,
            max_task_retries=-1 if max_restarts > 0 else 0)
        by_shard: dict[int, list[Any]] = {}
        for t, pl in enumerate(plan.placements):
            path = str((root / f"{pl.table.name}.safetensors").resolve())
            shape = (pl.table.num_rows, pl.table.dim)
            for p, q in enumerate(pl.pieces):
                by_shard.setdefault(q.shard, []).append((t, p, path, shape, q.rows, q.cols))
        self._actors = {s: actor_class.remote(s, pieces, threads_per_shard)
                        for s, pieces in sorted(by_shard.items())}
        try:
            ray.get([a.ready.remote() for a in self._actors.values()],
                    timeout=ready_timeout_s)
        except Exception as e:
            self.close()
            raise RuntimeError(f"the shard actors did not start: {e}") from e

    @property
    def actors(self) -> dict[int, Any]:
        """The actor handle of each shard that holds pieces."""
        return dict(self._actors)

    @property
    def dims(self) -> list[int]:
        return [t.dim for t in self.plan.tables]

    def lookup(self, indices: Sequence[Any], offsets: Optional[Sequence[Any]] = None,
               lengths: Optional[Sequence[Any]] = None,
               weights: Optional[Sequence[Any]] = None, mode: str = "sum",
               include_last_offset: bool = False) -> np.ndarray:
        """Pool every table for the same batch (arguments as
        :meth:`recengine.EmbeddingCollection.lookup`) on the shards; returns
        ``[B, sum(dims)]`` float32.

        Raises:
            ShardUnavailableError: a shard died, or all answers did not come within
                ``timeout_s``.
            IndexError, ValueError, TypeError: bad input, before any shard is called.
        """
        ray = _ray()
        if not self._actors:
            raise RuntimeError("this RayShardedEmbedding is closed")
        routed = self._router.route(list(indices), None if offsets is None else list(offsets),
                                    None if lengths is None else list(lengths),
                                    None if weights is None else list(weights), mode,
                                    include_last_offset)
        work = routed.by_shard(self._router)
        refs = {s: self._actors[s].lookup.remote(items) for s, items in work.items()}
        deadline = time.monotonic() + self.timeout_s
        blocks: dict[tuple[int, int], np.ndarray] = {}
        pending = dict(refs)
        try:
            while pending:
                left = deadline - time.monotonic()
                ready, _ = ray.wait(list(pending.values()), num_returns=1,
                                    timeout=max(left, 0.0))
                if not ready:
                    late = sorted(pending)
                    raise ShardUnavailableError(
                        late[0], f"no answer within {self.timeout_s:g} s (waiting on shards "
                        f"{late})")
                shard = next(s for s, r in pending.items() if r == ready[0])
                del pending[shard]
                try:
                    blocks.update(ray.get(ready[0]))
                except ray.exceptions.RayActorError as e:
                    raise ShardUnavailableError(shard, f"its actor died ({type(e).__name__})"
                                                ) from e
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    raise ShardUnavailableError(
                        shard, f"it raised {type(cause).__name__}: {cause}") from e
        except ShardUnavailableError:
            for r in pending.values():
                ray.cancel(r)
            raise
        return routed.merge(self._router, blocks)

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds each shard actor's process has used since it loaded its pieces."""
        ray = _ray()
        return dict(zip(self._actors, ray.get([a.cpu_seconds.remote()
                                               for a in self._actors.values()],
                                              timeout=self.timeout_s)))

    def close(self) -> None:
        """Stop the actors (and the local Ray instance, if this object started it)."""
        ray = _ray()
        for a in getattr(self, "_actors", {}).values():
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        self._actors = {}
        if getattr(self, "_owns_ray", False) and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayShardedEmbedding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_reachable(address: Optional[str], timeout_s: float = 5.0) -> None:
    """Refuse at once a Ray address ``host:port`` (or ``ray://host:port``) where nothing
    listens: ``ray.init`` retries such an address for minutes.

    Raises:
        ConnectionError: no TCP connection within ``timeout_s``.
    """
    if address is None or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # a form ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address} ({e})") from None
