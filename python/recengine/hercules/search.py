"""Hercules' first-stage search: the best point of a discrete configuration lattice.

A :class:`Space` names each dimension's values in order (co-located instances, threads per
instance, batch size, ...) and may rule points out (``allowed``: for example instances x
threads <= cores). ``evaluate(point)`` returns a point's figure of merit (latency-bounded
throughput), higher is better, or ``None`` when the point cannot run.

:func:`gradient_search` is the search the Hercules paper calls gradient-based, in our own
form (the paper's is not public): steepest ascent over the lattice. From the current point it
evaluates the neighbours one step away in each dimension (both directions), moves to the best
one that gains more than ``tolerance`` (relative: set it to the measured run-to-run spread, so
noise does not look like a gradient), and keeps stepping in that direction with the step
doubled while it keeps gaining. When no such move gains, it tries two dimensions at once: a
step in each, either way (up in one and down in the other moves along a boundary such as
instances x threads <= cores; the same way in both crosses a ridge two coupled dimensions
draw, such as a GPU that runs either offloaded queries or every sub-request's dense part),
and, where the boundary blocks a dimension's own step, one step in another
dimension with the blocked one moved 1, 2, 4, ... steps past it (halving the threads per
instance while doubling the instances); it stops when no slide gains either. Evaluations are
memoised, so a point is never run twice. It starts from the lattice's centre and from every
``starts`` point given, and returns the best point found. :func:`grid_search` evaluates every
allowed point: the oracle it is measured against.

Example::

    >>> space = Space({"instances": (1, 2, 4, 8), "batch": (16, 32, 64, 128, 256)})
    >>> peak = lambda p: -abs(p["instances"] - 4) - abs(p["batch"] - 64) / 32
    >>> best = gradient_search(space, peak)
    >>> best.point, best.evaluations < grid_search(space, peak).evaluations
    ({'instances': 4, 'batch': 64}, True)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

__all__ = ["SearchResult", "Space", "gradient_search", "grid_search"]

Point = dict[str, Any]


@dataclass(frozen=True)
class Space:
    """Named dimensions, each a tuple of values in order; ``allowed(point)`` rules points out."""

    dims: Mapping[str, Sequence[Any]]
    allowed: Optional[Callable[[Point], bool]] = None

    def __post_init__(self) -> None:
        if not self.dims:
            raise ValueError("a space needs at least one dimension")
        for k, v in self.dims.items():
            if len(v) == 0:
                raise ValueError(f"dimension {k!r} has no values")

    @property
    def names(self) -> list[str]:
        return list(self.dims)

    def point(self, index: tuple[int, ...]) -> Point:
        """The point at lattice index ``index`` (one position per dimension)."""
        return {k: self.dims[k][i] for k, i in zip(self.names, index)}

    def index(self, point: Mapping[str, Any]) -> tuple[int, ...]:
        """The lattice index of ``point`` (its values must be the dimensions')."""
        try:
            return tuple(list(self.dims[k]).index(point[k]) for k in self.names)
        except (KeyError, ValueError):
            raise ValueError(f"{dict(point)} is not a point of this space "
                             f"({ {k: list(v) for k, v in self.dims.items()} })") from None

    def ok(self, index: tuple[int, ...]) -> bool:
        return all(0 <= i < len(self.dims[k]) for k, i in zip(self.names, index)) and (
            self.allowed is None or bool(self.allowed(self.point(index))))

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Every allowed lattice index."""
        for idx in itertools.product(*(range(len(v)) for v in self.dims.values())):
            if self.ok(idx):
                yield idx

    @property
    def size(self) -> int:
        """How many allowed points the space has."""
        return sum(1 for _ in self.indices())


@dataclass
class SearchResult:
    """The best point found, its value, and every point evaluated (in order) with its value."""

    point: Point
    value: float
    evaluations: int
    history: list[tuple[Point, Optional[float]]] = field(default_factory=list, repr=False)


class _Memo:
    """Each point evaluated at most once; ``None`` (cannot run) kept as -inf."""

    def __init__(self, space: Space, evaluate: Callable[[Point], Optional[float]]) -> None:
        self.space, self.evaluate = space, evaluate
        self.seen: dict[tuple[int, ...], float] = {}
        self.history: list[tuple[Point, Optional[float]]] = []

    def __call__(self, idx: tuple[int, ...]) -> float:
        if idx not in self.seen:
            point = self.space.point(idx)
            v = self.evaluate(point)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"evaluate({point}) returned {v}; expected a finite number "
                                 f"or None")
            self.history.append((point, v))
            self.seen[idx] = -math.inf if v is None else float(v)
        return self.seen[idx]

    def best(self) -> SearchResult:
        if not self.seen or max(self.seen.values()) == -math.inf:
            raise ValueError("no point of the space could run (every evaluation returned None)")
        idx = max(self.seen, key=lambda i: self.seen[i])
        return SearchResult(self.space.point(idx), self.seen[idx], len(self.seen),
                            self.history)


def grid_search(space: Space, evaluate: Callable[[Point], Optional[float]]) -> SearchResult:
    """Evaluate every allowed point; the best one."""
    memo = _Memo(space, evaluate)
    for idx in space.indices():
        memo(idx)
    if not memo.seen:
        raise ValueError("the space has no allowed point")
    return memo.best()


def gradient_search(space: Space, evaluate: Callable[[Point], Optional[float]],
                    starts: Sequence[Mapping[str, Any]] = (), tolerance: float = 0.0,
                    max_evaluations: Optional[int] = None, centre: bool = True
                    ) -> SearchResult:
    """Steepest ascent with step doubling over ``space`` (see the module's note), from its
    centre (unless ``centre`` is False and ``starts`` are given) and from each of ``starts``;
    ``tolerance`` is the relative gain a move must beat; ``max_evaluations`` caps the points
    run."""
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    memo = _Memo(space, evaluate)
    sizes = [len(v) for v in space.dims.values()]
    origins = ([tuple((n - 1) // 2 for n in sizes)] if centre or not starts else []) + [
        space.index(p) for p in starts]

    def budget_left() -> bool:
        return max_evaluations is None or len(memo.seen) < max_evaluations

    def gains(new: float, old: float) -> bool:
        # From a point that cannot run (-inf), any runnable one is a gain.
        if old == -math.inf:
            return new > -math.inf
        return new > old + tolerance * abs(old)

    for origin in origins:
        cur = origin if space.ok(origin) else _nearest_allowed(space, origin)
        if cur is None or not budget_left():
            continue
        value = memo(cur)
        while budget_left():
            moves = []
            for d in range(len(sizes)):
                for sign in (-1, 1):
                    nxt = (*cur[:d], cur[d] + sign, *cur[d + 1:])
                    if space.ok(nxt) and budget_left():
                        moves.append((memo(nxt), d, sign, nxt))
            better = [m for m in moves if gains(m[0], value)]
            if not better:
                # Stuck on a single-dimension peak: a step in two dimensions at once (along
                # a boundary the space draws, instances up and threads down, or across a
                # ridge two coupled dimensions draw).
                slide = []
                for nxt in _slides(space, cur, sizes):
                    if space.ok(nxt) and budget_left():
                        v = memo(nxt)
                        if gains(v, value):
                            slide.append((v, nxt))
                if not slide:
                    break
                value, cur = max(slide, key=lambda m: m[0])
                continue
            value, d, sign, cur = max(better, key=lambda m: m[0])
            step = 2
            while budget_left():
                nxt = (*cur[:d], cur[d] + sign * step, *cur[d + 1:])
                if not space.ok(nxt) or not gains(memo(nxt), value):
                    break
                value, cur = memo(nxt), nxt
                step *= 2
    if not memo.seen:
        raise ValueError("the space has no allowed point")
    return memo.best()


def _slides(space: Space, cur: tuple[int, ...], sizes: list[int]) -> list[tuple[int, ...]]:
    """Moves in two dimensions at once from ``cur``: one step in each, either way; and where
    a dimension's own step is ruled out by ``allowed`` (a boundary
    such as instances x threads <= cores), a step in another dimension either way with that
    dimension moved 1, 2, 4, ... steps on past where it stood (so that halving the threads
    can double the instances in one move)."""
    def moved(changes: dict[int, int]) -> tuple[int, ...]:
        return tuple(i + changes.get(k, 0) for k, i in enumerate(cur))

    out = [moved({a: sa, b: sb}) for a, b in itertools.combinations(range(len(sizes)), 2)
           for sa in (-1, 1) for sb in (-1, 1)]
    for a in range(len(sizes)):
        for sa in (-1, 1):
            blocked = moved({a: sa})
            if not 0 <= blocked[a] < sizes[a] or space.ok(blocked):
                continue
            for b in range(len(sizes)):
                for sb in (-1, 1):
                    if b == a or not 0 <= cur[b] + sb < sizes[b]:
                        continue
                    step = 1
                    while 0 <= cur[a] + sa * step < sizes[a]:
                        out.append(moved({a: sa * step, b: sb}))
                        step *= 2
    return list(dict.fromkeys(out))


def _nearest_allowed(space: Space, origin: tuple[int, ...]) -> Optional[tuple[int, ...]]:
    """The allowed index closest to ``origin`` (fewest steps), or None."""
    best: Optional[tuple[int, ...]] = None
    dist = math.inf
    for idx in space.indices():
        d = sum(abs(a - b) for a, b in zip(idx, origin))
        if d < dist:
            best, dist = idx, d
    return best
