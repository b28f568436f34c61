"""Sharding plans: which shard holds which part of which table, and what each shard costs.

:func:`plan` places tables on ``num_shards`` shards by one of five strategies
(:data:`STRATEGIES`):

* ``"singular"``: every table on one shard, the unsharded baseline (``num_shards`` and the
  memory cap are ignored);
* ``"capacity"``: table-wise, bin-packing bytes: largest table first, each onto the shard
  with the fewest bytes that has room (capacity-balanced);
* ``"load"``: table-wise, balancing expected work: the table with the most bytes read per
  query first, each onto the shard with the least expected work that has room;
* ``"net"``: table-wise, the tables of each model part (``ShardTable.net``) packed together
  on shards of their own, so a query to one part calls few shards (net-specific
  bin-packing); shards go to the nets in proportion to their bytes;
* ``"cost"``: a TorchRec-like planner: for each table (costliest first) it tries table-wise
  on every shard, row-wise and column-wise over 2 or more of the least loaded shards, and
  keeps the placement whose slowest shard is fastest under the cost model below.

The cost model (:class:`CostModel`) predicts a shard's time per query as a fixed cost per
shard call and per piece it pools (bags to route, a block to merge), plus, per lookup, the
cache lines its row spans over the memory bandwidth (51 GB/s by default, TorchRec's DDR
figure) and a fixed cost per lookup; rows narrower than 128 values pay a small-dimension
penalty, as in TorchRec. A query's predicted latency is its slowest shard's.

Example::

    >>> from recengine.shard import ShardTable, plan
    >>> tables = [ShardTable(f"t{i}", 10_000, 32, lookups=20) for i in range(4)]
    >>> p = plan(tables, 2, strategy="capacity")
    >>> p.shard_bytes()
    [2560000, 2560000]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .. import _core
from .._dtypes import STORAGE_DTYPES, row_bytes
from ..shapes import TableSpec

__all__ = [
    "SPLITS",
    "STRATEGIES",
    "CostModel",
    "Piece",
    "ShardPlan",
    "ShardTable",
    "TablePlacement",
    "measure_access",
    "plan",
]

#: The planners of :func:`plan`.
STRATEGIES: tuple[str, ...] = ("singular", "capacity", "load", "net", "cost")
#: How a table can be split (see ``recengine._core.ShardedCollection``).
SPLITS: tuple[str, ...] = ("table", "row", "column", "table_row", "replicated")


@dataclass(frozen=True)
class ShardTable:
    """What a planner knows of a table.

    Args:
        name: the table's name (its file's stem for the distributed backend).
        num_rows, dim: its shape.
        dtype: its storage format ("fp32", "fp16", "bf16", "int8", "int4").
        lookups: expected rows pooled per sample (the pooling factor; access statistics).
        net: the model part it belongs to (for the ``"net"`` strategy).
    """

    name: str
    num_rows: int
    dim: int
    dtype: str = "fp32"
    lookups: float = 1.0
    net: str = "main"

    def __post_init__(self) -> None:
        if self.num_rows < 1 or self.dim < 1:
            raise ValueError(f"table {self.name!r} needs num_rows >= 1 and dim >= 1")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"table {self.name!r}: unknown dtype {self.dtype!r}; expected one "
                             f"of {', '.join(STORAGE_DTYPES)}")
        if not self.lookups >= 0:
            raise ValueError(f"table {self.name!r}: lookups must be >= 0, got {self.lookups}")

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.dtype, self.dim)

    @property
    def nbytes(self) -> int:
        return self.num_rows * self.row_bytes

    @classmethod
    def from_spec(cls, spec: TableSpec, name: str, dtype: str = "fp32",
                  net: str = "main") -> ShardTable:
        """From a DeepRecInfra model's :class:`~recengine.shapes.TableSpec`."""
        return cls(name, spec.num_rows, spec.dim, dtype, float(spec.lookups), net)


@dataclass(frozen=True)
class Piece:
    """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of a table, on ``shard``."""

    shard: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def num_cols(self) -> int:
        return self.cols[1] - self.cols[0]


@dataclass
class TablePlacement:
    """One table's split and pieces."""

    table: ShardTable
    split: str
    pieces: list[Piece]

    def lookup_share(self, piece: Piece) -> float:
        """The share of the table's lookups (per sample) the piece serves, for uniform rows:
        its rows' fraction (row splits), all (table, column), 1/replicas (replicated)."""
        if self.split in ("row", "table_row"):
            return piece.num_rows / self.table.num_rows
        if self.split == "replicated":
            return 1.0 / len(self.pieces)
        return 1.0

    def piece_seconds(self, piece: Piece, cm: CostModel, batch: int) -> float:
        """The cost model's time for the piece's share of a query of ``batch`` samples: its
        lookups at the row width it holds, plus the per-piece cost (0 when it gets none).
        The one per-piece cost: the planner optimises it and the plan's figures report it."""
        n = self.table.lookups * batch * self.lookup_share(piece)
        if n <= 0:
            return 0.0
        width = row_bytes(self.table.dtype, piece.num_cols)
        return n * cm.lookup_s(width, piece.num_cols) + cm.per_piece_us * 1e-6

    def piece_bytes(self, piece: Piece) -> int:
        width = row_bytes(self.table.dtype, piece.num_cols) if piece.cols != (
            0, self.table.dim) else self.table.row_bytes
        return piece.num_rows * width


@dataclass(frozen=True)
class CostModel:
    """Predicted time of a shard's share of a query (see the module's note)."""

    bandwidth_gb_s: float = 51.0
    per_lookup_ns: float = 2.0
    per_call_us: float = 5.0
    per_piece_us: float = 1.0
    line_bytes: int = 64

    def lookup_s(self, row_bytes: int, dim: int) -> float:
        """Seconds per lookup of a row of ``row_bytes`` bytes and ``dim`` values."""
        lines = math.ceil(row_bytes / self.line_bytes) * self.line_bytes
        penalty = 1.0 if dim >= 128 else 1.0 + 0.5 * (128 - dim) / 128
        return lines * penalty / (self.bandwidth_gb_s * 1e9) + self.per_lookup_ns * 1e-9


@dataclass
class ShardPlan:
    """Where every table's pieces live, with per-shard figures.

    ``shard_bytes()``, ``shard_lookups(batch)`` (expected lookups per query) and
    ``predicted_ms(batch)`` are per shard; :meth:`describe` prints them as a table. ``to_core``
    gives the form ``recengine._core`` takes; :meth:`to_json` / :meth:`from_json` save it.
    """

    strategy: str
    num_shards: int
    placements: list[TablePlacement]
    memory_per_shard: Optional[int] = None
    cost_model: CostModel = field(default_factory=CostModel)

    @property
    def tables(self) -> list[ShardTable]:
        return [p.table for p in self.placements]

    def to_core(self) -> tuple[int, list[str], list[list[tuple[int, int, int, int, int]]]]:
        return (self.num_shards, [p.split for p in self.placements],
                [[(q.shard, q.rows[0], q.rows[1], q.cols[0], q.cols[1]) for q in p.pieces]
                 for p in self.placements])

    def router(self) -> _core.Router:
        """The core's router for this plan (checks that it covers every table exactly)."""
        return _core.Router([(t.num_rows, t.dim) for t in self.tables], *self.to_core())

    def check(self) -> ShardPlan:
        """Raise ValueError where a piece is on a shard that does not exist, or a table's
        pieces leave rows or columns uncovered or overlap; return the plan."""
        self.router()
        return self

    def shard_bytes(self) -> list[int]:
        out = [0] * self.num_shards
        for p in self.placements:
            for q in p.pieces:
                out[q.shard] += p.piece_bytes(q)
        return out

    def shard_lookups(self, batch: int = 1) -> list[float]:
        """Expected lookups per query of ``batch`` samples, per shard (uniform rows)."""
        out = [0.0] * self.num_shards
        for p in self.placements:
            for q in p.pieces:
                out[q.shard] += p.table.lookups * batch * p.lookup_share(q)
        return out

    def shard_calls(self) -> list[int]:
        """Tables (pieces) each shard serves per query: the calls it receives as separate
        shares."""
        out = [0] * self.num_shards
        for p in self.placements:
            for q in p.pieces:
                out[q.shard] += 1
        return out

    def predicted_ms(self, batch: int = 1) -> list[float]:
        """Predicted time of each shard's share of a query of ``batch`` samples (0 for a shard
        the query does not call)."""
        work = [0.0] * self.num_shards
        calls = [0] * self.num_shards
        for p in self.placements:
            for q in p.pieces:
                t = p.piece_seconds(q, self.cost_model, batch)
                work[q.shard] += t
                calls[q.shard] += t > 0
        return [1e3 * s for s in _shard_seconds(work, calls, self.cost_model)]

    def predicted_latency_ms(self, batch: int = 1) -> float:
        """The slowest shard's predicted time: the query's predicted latency."""
        return max(self.predicted_ms(batch), default=0.0)

    def summary(self, batch: int = 1) -> list[dict[str, Any]]:
        """One row per shard: tables and pieces held, bytes, expected lookups and predicted
        time per query of ``batch`` samples."""
        nbytes, looks, ms = self.shard_bytes(), self.shard_lookups(batch), self.predicted_ms(batch)
        rows = []
        for s in range(self.num_shards):
            pieces = [(p.table.name, p.split) for p in self.placements for q in p.pieces
                      if q.shard == s]
            rows.append({"shard": s, "pieces": len(pieces),
                         "tables": sorted({name for name, _ in pieces}),
                         "splits": sorted({split for _, split in pieces}),
                         "bytes": nbytes[s], "lookups_per_query": looks[s],
                         "predicted_ms": ms[s]})
        return rows

    def describe(self, batch: int = 1) -> str:
        """The plan as a text table, one line per shard (see :meth:`summary`)."""
        head = (f"plan {self.strategy!r}: {len(self.placements)} tables on {self.num_shards} "
                "shard(s)" + ("" if self.memory_per_shard is None
                               else f", at most {_mib(self.memory_per_shard)} each")
                + f"; predicted latency {self.predicted_latency_ms(batch):.3f} ms at batch "
                f"{batch}")
        lines = [head, f"{'shard':>5}  {'pieces':>6}  {'MiB':>9}  {'lookups/query':>13}  "
                 f"{'predicted ms':>12}  splits"]
        for r in self.summary(batch):
            lines.append(f"{r['shard']:>5}  {r['pieces']:>6}  {r['bytes'] / 2**20:>9.1f}  "
                         f"{r['lookups_per_query']:>13.1f}  {r['predicted_ms']:>12.3f}  "
                         f"{','.join(r['splits']) or '-'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    def to_json(self) -> str:
        return json.dumps({"strategy": self.strategy, "num_shards": self.num_shards,
                           "memory_per_shard": self.memory_per_shard,
                           "cost_model": asdict(self.cost_model),
                           "placements": [{"table": asdict(p.table), "split": p.split,
                                           "pieces": [asdict(q) for q in p.pieces]}
                                          for p in self.placements]})

    @classmethod
    def from_json(cls, text: str) -> ShardPlan:
        d = json.loads(text)
        placements = [TablePlacement(ShardTable(**p["table"]), p["split"],
                                     [Piece(q["shard"], tuple(q["rows"]), tuple(q["cols"]))
                                      for q in p["pieces"]]) for p in d["placements"]]
        return cls(d["strategy"], d["num_shards"], placements, d["memory_per_shard"],
                   CostModel(**d["cost_model"])).check()


def _mib(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _whole(t: ShardTable, shard: int) -> TablePlacement:
    return TablePlacement(t, "table", [Piece(shard, (0, t.num_rows), (0, t.dim))])


def _shard_seconds(work: Sequence[float], calls: Sequence[int], cm: CostModel) -> list[float]:
    """Each shard's predicted time from its pieces' summed time: plus the per-call cost where
    the query calls it, 0 where it does not."""
    return [w + cm.per_call_us * 1e-6 if c else 0.0 for w, c in zip(work, calls)]


def _table_cost(t: ShardTable, cm: CostModel, batch: int) -> float:
    return t.lookups * batch * cm.lookup_s(t.row_bytes, t.dim)


def _pack(tables: Sequence[ShardTable], shards: Sequence[int], cap: Optional[int],
          weight: Any, strategy: str) -> list[TablePlacement]:
    """Table-wise greedy packing: tables by decreasing ``weight``, each onto the shard (of
    ``shards``) with the least weight so far that has room under ``cap``."""
    load = {s: 0.0 for s in shards}
    used = {s: 0 for s in shards}
    out = []
    for t in sorted(tables, key=weight, reverse=True):
        room = [s for s in shards if cap is None or used[s] + t.nbytes <= cap]
        if not room:
            assert cap is not None
            raise ValueError(
                f"strategy {strategy!r}: table {t.name!r} ({_mib(t.nbytes)}) fits on none of "
                f"{len(shards)} shard(s) under {_mib(cap)} each (free: "
                f"{', '.join(_mib(cap - used[s]) for s in shards)}); add shards, raise "
                "memory_per_shard, or use strategy='cost', which can split tables")
        s = min(room, key=lambda s: (load[s], used[s], s))
        load[s] += weight(t)
        used[s] += t.nbytes
        out.append(_whole(t, s))
    return out


def _split_ranges(n: int, k: int) -> list[tuple[int, int]]:
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


def _cost_plan(tables: Sequence[ShardTable], num_shards: int, cap: Optional[int],
               cm: CostModel, batch: int) -> tuple[list[TablePlacement], list[float]]:
    """Greedy TorchRec-like planning. Tables go costliest first. One that costs no more than
    an even share of the total (and fits) goes whole onto the shard that ends least loaded;
    a costlier one (or one that fits nowhere whole) may also be split by rows or columns
    over the k least loaded shards, k from what an even share needs up to all. Among the
    candidates the one whose slowest shard is fastest wins (then the least total time, then
    the fewest pieces). Returns the placements and each shard's time as the planner saw it
    (what :meth:`ShardPlan.predicted_ms` reports)."""
    load = [0.0] * num_shards
    calls = [0] * num_shards
    used = [0] * num_shards
    target = sum(_table_cost(t, cm, batch) + cm.per_piece_us * 1e-6 for t in tables) / num_shards
    out = []
    for t in sorted(tables, key=lambda t: (_table_cost(t, cm, batch), t.nbytes), reverse=True):
        order = sorted(range(num_shards), key=lambda s: (load[s], used[s]))
        candidates = [_whole(t, s) for s in range(num_shards)]
        fits_whole = cap is None or any(u + t.nbytes <= cap for u in used)
        cost = _table_cost(t, cm, batch)
        if cost > target or not fits_whole:
            least = max(2, math.ceil(cost / target) if target > 0 else 2)
            for k in range(min(least, num_shards), min(num_shards, t.num_rows) + 1):
                shards = order[:k]
                candidates.append(TablePlacement(t, "row", [
                    Piece(s, r, (0, t.dim))
                    for s, r in zip(shards, _split_ranges(t.num_rows, k))]))
                if t.dim >= 4 * k:
                    candidates.append(TablePlacement(t, "column", [
                        Piece(s, (0, t.num_rows), c)
                        for s, c in zip(shards, _split_ranges(t.dim, k))]))
        best = None
        for cand in candidates:
            new_used, new_load, new_calls = list(used), list(load), list(calls)
            for q in cand.pieces:
                new_used[q.shard] += cand.piece_bytes(q)
                piece_s = cand.piece_seconds(q, cm, batch)
                new_load[q.shard] += piece_s
                new_calls[q.shard] += piece_s > 0
            if cap is not None and any(u > cap for u in new_used):
                continue
            shard_time = _shard_seconds(new_load, new_calls, cm)
            key = (max(shard_time), sum(shard_time), len(cand.pieces))
            if best is None or key < best[0]:
                best = (key, cand, new_used, new_load, new_calls)
        if best is None:
            assert cap is not None
            raise ValueError(
                f"strategy 'cost': table {t.name!r} ({_mib(t.nbytes)}) cannot be placed even "
                f"split over all {num_shards} shard(s) under {_mib(cap)} each; add "
                "shards or raise memory_per_shard")
        _, cand, used, load, calls = best
        out.append(cand)
    return out, _shard_seconds(load, calls, cm)


def _net_plan(tables: Sequence[ShardTable], num_shards: int, cap: Optional[int],
              cm: CostModel, batch: int) -> list[TablePlacement]:
    nets: dict[str, list[ShardTable]] = {}
    for t in tables:
        nets.setdefault(t.net, []).append(t)
    names = sorted(nets, key=lambda n: -sum(t.nbytes for t in nets[n]))
    if len(names) > num_shards:
        # More parts than shards: pack whole parts onto shards, biggest first.
        part_tables = [ShardTable(n, 1, 1, "fp32", 0.0, n) for n in names]
        sizes = {n: sum(t.nbytes for t in nets[n]) for n in names}
        used = [0] * num_shards
        home: dict[str, int] = {}
        for pt in part_tables:
            s = min(range(num_shards), key=lambda s: used[s])
            if cap is not None and used[s] + sizes[pt.name] > cap:
                raise ValueError(f"strategy 'net': part {pt.name!r} ({_mib(sizes[pt.name])}) "
                                 f"does not fit on a shard under {_mib(cap)}")
            used[s] += sizes[pt.name]
            home[pt.name] = s
        return [_whole(t, home[t.net]) for t in tables]
    # Shards to each part in proportion to its bytes, at least one each.
    total = sum(t.nbytes for t in tables)
    share = {n: max(1, round(num_shards * sum(t.nbytes for t in nets[n]) / total))
             for n in names}
    while sum(share.values()) > num_shards:
        n = max((n for n in names if share[n] > 1), key=lambda n: share[n])
        share[n] -= 1
    while sum(share.values()) < num_shards:
        n = max(names, key=lambda n: sum(t.nbytes for t in nets[n]) / share[n])
        share[n] += 1
    out, first = [], 0
    for n in names:
        shards = list(range(first, first + share[n]))
        first += share[n]
        out += _pack(nets[n], shards, cap, lambda t: t.nbytes, "net")
    return out


def plan(tables: Sequence[Any], num_shards: int, strategy: str = "cost",
         memory_per_shard: Optional[int] = None, access_stats: Optional[Sequence[Any]] = None,
         batch: int = 1, cost_model: Optional[CostModel] = None) -> ShardPlan:
    """Place ``tables`` on ``num_shards`` shards.

    Args:
        tables: :class:`ShardTable` objects, or ``EmbeddingTable`` objects (named t0, t1 ...).
        num_shards: shards to use (>= 1).
        strategy: one of :data:`STRATEGIES` (see the module's note).
        memory_per_shard: the most bytes a shard may hold (None: no cap; "singular"
            ignores it).
        access_stats: per table, the expected lookups per sample, e.g. measured from sample
            queries by :func:`measure_access`; overrides ``ShardTable.lookups``. Rows are
            taken as uniformly hot (row-wise pieces share a table's lookups by row count).
        batch: samples per query, for the load and cost figures.
        cost_model: the :class:`CostModel` (TorchRec-like defaults).

    Returns:
        A checked :class:`ShardPlan` (tables in the order given).

    Raises:
        ValueError: zero shards, an unknown strategy, or a table that fits on no shard.

    Example::

        >>> from recengine.shard import ShardTable, plan
        >>> p = plan([ShardTable("big", 100_000, 64, lookups=50),
        ...           ShardTable("small", 1_000, 16)], 2, strategy="load")
        >>> [pl.pieces[0].shard for pl in p.placements]
        [0, 1]
    """
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of "
                         f"{', '.join(STRATEGIES)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    specs = [_as_shard_table(t, i) for i, t in enumerate(tables)]
    if not specs:
        raise ValueError("nothing to plan: no tables")
    if access_stats is not None:
        if len(access_stats) != len(specs):
            raise ValueError(f"access_stats has {len(access_stats)} entries for "
                             f"{len(specs)} tables")
        specs = [_with_lookups(t, a) for t, a in zip(specs, access_stats)]
    cm = cost_model or CostModel()
    total = sum(t.nbytes for t in specs)
    if strategy == "singular":
        return ShardPlan("singular", 1, [_whole(t, 0) for t in specs], None, cm).check()
    cap = memory_per_shard
    if cap is not None:
        if not cap >= 1:
            raise ValueError(f"memory_per_shard must be positive, got {cap}")
        if total > cap * num_shards:
            raise ValueError(f"the tables take {_mib(total)}, more than {num_shards} shard(s) "
                             f"of {_mib(cap)} hold")
    if strategy == "capacity":
        placed = _pack(specs, list(range(num_shards)), cap, lambda t: t.nbytes, strategy)
    elif strategy == "load":
        placed = _pack(specs, list(range(num_shards)), cap,
                       lambda t: _table_cost(t, cm, batch), strategy)
    elif strategy == "net":
        placed = _net_plan(specs, num_shards, cap, cm, batch)
    else:
        placed, _ = _cost_plan(specs, num_shards, cap, cm, batch)
    order = {id(t): i for i, t in enumerate(specs)}
    placed.sort(key=lambda p: order[id(p.table)])
    return ShardPlan(strategy, num_shards, placed, cap, cm).check()


def measure_access(queries: Iterable[tuple[Sequence[Any], int]]) -> list[float]:
    """Lookups per sample of each table over sample queries, for ``plan(access_stats=...)``.

    Args:
        queries: ``(indices, batch)`` pairs: one index array per table (its ids for the
            query's ``batch`` samples) and the sample count.

    Example::

        >>> measure_access([([np.arange(6), np.arange(2)], 2)])
        [3.0, 1.0]
    """
    counts: Optional[np.ndarray] = None
    samples = 0
    for indices, batch in queries:
        n = np.array([np.asarray(i).size for i in indices], dtype=np.float64)
        if counts is not None and n.shape != counts.shape:
            raise ValueError("every query needs one index array per table")
        counts = n if counts is None else counts + n
        samples += int(batch)
    if counts is None or samples <= 0:
        raise ValueError("measure_access needs at least one query with samples")
    return (counts / samples).tolist()


def _as_shard_table(t: Any, i: int) -> ShardTable:
    if isinstance(t, ShardTable):
        return t
    if hasattr(t, "num_rows") and hasattr(t, "dim") and hasattr(t, "dtype"):
        return ShardTable(f"t{i}", int(t.num_rows), int(t.dim), str(t.dtype))
    if isinstance(t, TableSpec):
        return ShardTable.from_spec(t, f"t{i}")
    raise TypeError(f"table {i}: expected a ShardTable, EmbeddingTable or TableSpec, got "
                    f"{type(t).__name__}")


def _with_lookups(t: ShardTable, stat: Any) -> ShardTable:
    if isinstance(stat, (int, float, np.integer, np.floating)):
        lookups = float(stat)
    else:
        raise TypeError(f"access_stats for table {t.name!r} must be a number (lookups per "
                        f"sample); see measure_access for traces, got {type(stat).__name__}")
    return ShardTable(t.name, t.num_rows, t.dim, t.dtype, lookups, t.net)
