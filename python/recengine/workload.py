"""Query streams for serving studies (DeepRecInfra): when queries arrive, how many items
each ranks, and which embedding rows they read. Everything is reproducible from a seed.

* Arrivals (:data:`ARRIVALS`): ``"poisson"`` (exponential gaps), ``"poisson-ms"`` (the public
  code's integer-millisecond Poisson gaps), ``"diurnal"`` (a Poisson process whose rate
  follows ``rate * (1 + amplitude * sin(2 pi t / period))``), or a replayed file
  (:func:`load_arrivals`).
* Query sizes (:class:`QuerySizes`): lognormal (mu 5.1, sigma 0.2: median about 164 items),
  normal, fixed, or read from a file of percentiles; always clipped to [1, 1024].
* Rows: :func:`recengine.rows.draw_rows`'s distributions, plus real item popularity
  (:func:`interaction_counts`, MovieLens-100k from the ``recbole`` wheel by default, and
  :func:`interaction_rows`).

Example::

    >>> w = Workload(rate_qps=100.0, sizes=QuerySizes.lognormal(), seed=1)
    >>> arrivals, sizes = w.queries(1000)
    >>> arrivals.shape, sizes.dtype.name, bool(1 <= sizes.min() and sizes.max() <= 1024)
    ((1000,), 'int64', True)
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

__all__ = [
    "ARRIVALS",
    "MAX_QUERY_SIZE",
    "QuerySizes",
    "Workload",
    "arrival_times",
    "interaction_counts",
    "interaction_rows",
    "load_arrivals",
]

#: Arrival processes :func:`arrival_times` knows.
ARRIVALS: tuple[str, ...] = ("poisson", "poisson-ms", "diurnal")

#: Query sizes are clipped to [1, MAX_QUERY_SIZE] items (DeepRecInfra).
MAX_QUERY_SIZE = 1024

PathLike = Union[str, "os.PathLike[str]"]


def arrival_times(rate_qps: float, n: int, process: str = "poisson",
                  rng: Optional[np.random.Generator] = None, *, period_s: float = 60.0,
                  amplitude: float = 0.5) -> np.ndarray:
    """``n`` arrival times in seconds (float64 ``[n]``, non-decreasing, the first gap from 0)
    of a ``process`` at mean rate ``rate_qps``.

    ``"poisson-ms"`` rounds each exponential gap to whole milliseconds (so several queries
    may arrive at once, as in the public DeepRecSys code). ``"diurnal"`` thins a Poisson
    process of rate ``rate * (1 + amplitude)`` to ``rate * (1 + amplitude * sin(2 pi t /
    period_s))``.

    Raises:
        ValueError: a non-positive rate, negative ``n``, an unknown process, or an amplitude
            outside [0, 1].
    """
    if not (isinstance(rate_qps, (int, float)) and math.isfinite(rate_qps) and rate_qps > 0):
        raise ValueError(f"the arrival rate must be a positive number of queries/s, "
                         f"got {rate_qps!r}")
    if n < 0:
        raise ValueError(f"cannot draw {n} arrivals")
    rng = np.random.default_rng() if rng is None else rng
    if process == "poisson":
        return np.cumsum(rng.exponential(1.0 / rate_qps, n))
    if process == "poisson-ms":
        return np.cumsum(np.round(rng.exponential(1e3 / rate_qps, n))) / 1e3
    if process == "diurnal":
        if not 0 <= amplitude <= 1:
            raise ValueError(f"the diurnal amplitude must be in [0, 1], got {amplitude}")
        if not period_s > 0:
            raise ValueError(f"the diurnal period must be positive, got {period_s}")
        peak = rate_qps * (1 + amplitude)
        out = np.empty(n)
        t, got = 0.0, 0
        while got < n:
            m = 2 * (n - got) + 16
            cand = t + np.cumsum(rng.exponential(1.0 / peak, m))
            keep = rng.random(m) * peak < rate_qps * (1 + amplitude * np.sin(
                2 * np.pi * cand / period_s))
            take = cand[keep][:n - got]
            out[got:got + len(take)] = take
            got += len(take)
            t = cand[-1]
        return out
    raise ValueError(f"unknown arrival process {process!r}; expected one of "
                     f"{', '.join(ARRIVALS)} (or replay a file with load_arrivals)")


def load_arrivals(path: PathLike) -> np.ndarray:
    """Arrival times (seconds, float64) replayed from ``path``: a ``.npy`` array or a text
    file of one time per line (``#`` comments allowed), sorted on load.

    Raises:
        FileNotFoundError: no such file. ValueError: negative or non-finite times, or none.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no arrival trace {path!r}")
    times = np.load(path) if path.endswith(".npy") else np.loadtxt(path, ndmin=1, comments="#")
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size == 0:
        raise ValueError(f"{path}: no arrival times")
    if not np.all(np.isfinite(times)) or times.min() < 0:
        raise ValueError(f"{path}: arrival times must be finite and non-negative")
    return np.sort(times)


@dataclass(frozen=True)
class QuerySizes:
    """A distribution of query sizes (items per query), clipped to [1, 1024].

    Build with :meth:`lognormal`, :meth:`normal`, :meth:`fixed` or :meth:`from_percentiles`;
    :meth:`sample` draws ``int64 [n]``.

    Example::

        >>> QuerySizes.fixed(64).sample(np.random.default_rng(0), 3)
        array([64, 64, 64])
    """

    kind: str
    params: tuple[float, ...] = ()
    table: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = field(default=None,
                                                                         repr=False)

    @classmethod
    def lognormal(cls, mu: float = 5.1, sigma: float = 0.2) -> QuerySizes:
        """``exp(N(mu, sigma^2))`` rounded (the DeepRecInfra default: median about 164)."""
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        return cls("lognormal", (float(mu), float(sigma)))

    @classmethod
    def normal(cls, mean: float = 165.0, sd: float = 16.0) -> QuerySizes:
        """``N(mean, sd^2)`` rounded (DeepRecInfra uses mean 165 or 256, sd 16 or 32)."""
        if not sd >= 0:
            raise ValueError(f"sd must be >= 0, got {sd}")
        return cls("normal", (float(mean), float(sd)))

    @classmethod
    def fixed(cls, size: int) -> QuerySizes:
        """Every query ``size`` items."""
        if not 1 <= size <= MAX_QUERY_SIZE:
            raise ValueError(f"a fixed query size must be in [1, {MAX_QUERY_SIZE}], got {size}")
        return cls("fixed", (float(size),))

    @classmethod
    def from_percentiles(cls, source: Union[PathLike, np.ndarray]) -> QuerySizes:
        """Sizes by inverse CDF from percentile points: an array or a text file of rows
        ``percentile size`` (percentile in [0, 100], comma or space separated), interpolated
        linearly; a single column is taken as sizes at evenly spaced percentiles from 0 to
        100 (at least 2).

        Raises:
            ValueError: fewer than 2 points, percentiles outside [0, 100] or not increasing,
                sizes decreasing.
        """
        if isinstance(source, np.ndarray):
            data = source.astype(np.float64)
        else:
            path = os.fspath(source)
            if not os.path.exists(path):
                raise FileNotFoundError(f"no percentile file {path!r}")
            with open(path) as fh:
                text = fh.read().replace(",", " ")
            rows = [line.split() for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
            try:
                data = np.array([[float(x) for x in r] for r in rows])
            except ValueError:
                raise ValueError(f"{path}: expected numbers, one 'percentile size' per "
                                 f"line") from None
        if data.ndim == 1 or (data.ndim == 2 and data.shape[1] == 1):
            sizes = data.reshape(-1)
            pct = np.linspace(0, 100, len(sizes))
        elif data.ndim == 2 and data.shape[1] == 2:
            pct, sizes = data[:, 0], data[:, 1]
        else:
            raise ValueError("percentile points must be 'percentile size' pairs or one "
                             "column of sizes")
        if len(sizes) < 2:
            raise ValueError("a size distribution needs at least 2 percentile points")
        if pct.min() < 0 or pct.max() > 100 or np.any(np.diff(pct) <= 0):
            raise ValueError("percentiles must increase within [0, 100]")
        if np.any(np.diff(sizes) < 0) or sizes.min() < 0:
            raise ValueError("sizes must be non-negative and not decrease with the percentile")
        return cls("percentiles", (), (tuple(pct.tolist()), tuple(sizes.tolist())))

    @classmethod
    def parse(cls, spec: str) -> QuerySizes:
        """From a command-line spec: ``lognormal:MU,SIGMA``, ``normal:MEAN,SD``, ``fixed:N``,
        or a percentile file's path (:meth:`from_percentiles`).

        Raises:
            ValueError: an unknown kind or a wrong number of parameters.
            FileNotFoundError: a path that names no file.

        Example::

            >>> QuerySizes.parse("lognormal:4.5,1").describe()
            'lognormal(mu=4.5, sigma=1)'
        """
        kinds = {"lognormal": (cls.lognormal, 2), "normal": (cls.normal, 2),
                 "fixed": (cls.fixed, 1)}
        kind, sep, rest = spec.partition(":")
        if not sep or kind not in kinds:
            if os.path.exists(spec) or not sep:
                return cls.from_percentiles(spec)
            raise ValueError(f"unknown query size distribution {kind!r}; expected "
                             f"lognormal:MU,SIGMA, normal:MEAN,SD, fixed:N or a file")
        make, count = kinds[kind]
        try:
            args = [float(x) for x in rest.split(",")]
        except ValueError:
            raise ValueError(f"{spec!r}: parameters must be numbers") from None
        if len(args) != count:
            raise ValueError(f"{kind} takes {count} parameter(s), got {spec!r}")
        return make(int(args[0])) if kind == "fixed" else make(*args)  # type: ignore[operator]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` sizes, int64, each in [1, 1024]."""
        if self.kind == "lognormal":
            raw = rng.lognormal(self.params[0], self.params[1], n)
        elif self.kind == "normal":
            raw = rng.normal(self.params[0], self.params[1], n)
        elif self.kind == "fixed":
            raw = np.full(n, self.params[0])
        elif self.kind == "percentiles" and self.table is not None:
            pct, sizes = self.table
            raw = np.interp(rng.random(n) * 100, pct, sizes)
        else:
            raise ValueError(f"unknown query size distribution {self.kind!r}")
        return np.clip(np.rint(raw), 1, MAX_QUERY_SIZE).astype(np.int64)

    def describe(self) -> str:
        """A short label, e.g. ``lognormal(mu=5.1, sigma=0.2)``."""
        names = {"lognormal": ("mu", "sigma"), "normal": ("mean", "sd"), "fixed": ("size",)}
        if self.kind in names:
            args = ", ".join(f"{k}={v:g}" for k, v in zip(names[self.kind], self.params))
            return f"{self.kind}({args})"
        return f"percentiles({len(self.table[0]) if self.table else 0} points)"


@dataclass(frozen=True)
class Workload:
    """A query stream: arrival process at ``rate_qps`` and query sizes, from ``seed``.

    Example::

        >>> a, s = Workload(50.0, process="poisson-ms", seed=0).queries(3)
        >>> bool(np.all(np.diff(a) >= 0)), s.shape
        (True, (3,))
    """

    rate_qps: float
    sizes: QuerySizes = field(default_factory=QuerySizes.lognormal)
    process: str = "poisson"
    seed: Optional[int] = 0

    def queries(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` queries: arrival times in seconds (float64 ``[n]``) and sizes (int64 ``[n]``).

        Arrivals and sizes come from separate streams of the seed, so the first ``k``
        queries are the same for every ``n >= k``, and the sizes the same at every rate."""
        times, items = (np.random.default_rng(s)
                        for s in np.random.SeedSequence(self.seed).spawn(2))
        return arrival_times(self.rate_qps, n, self.process, times), self.sizes.sample(items, n)


def _recbole_ml100k() -> str:
    spec = importlib.util.find_spec("recbole")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MovieLens-100k comes with the recbole wheel: pip install --no-deps recbole "
            "(its declared dependencies pin an old ray), or pass the path of an .inter file")
    root = next(iter(spec.submodule_search_locations))
    return os.path.join(root, "dataset_example", "ml-100k", "ml-100k.inter")


def interaction_counts(path: Optional[PathLike] = None) -> np.ndarray:
    """How often each item occurs in an interaction file, most popular first (int64).

    ``path`` is a RecBole atomic ``.inter`` file (tab separated, a header naming an
    ``item_id`` column); the default is the MovieLens-100k file shipped in the ``recbole``
    wheel (where the hottest 10% of items take about 43% of the interactions).

    Raises:
        FileNotFoundError: no file (or recbole not installed). ValueError: no ``item_id``
            column or no rows.
    """
    path = _recbole_ml100k() if path is None else os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no interaction file {path!r}")
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        cols = [h.split(":")[0] for h in header]
        if "item_id" not in cols:
            raise ValueError(f"{path}: the header names no item_id column ({header})")
        col = cols.index("item_id")
        items = [line.split("\t")[col] for line in fh if line.strip()]
    if not items:
        raise ValueError(f"{path}: no interactions")
    _, counts = np.unique(np.array(items), return_counts=True)
    return np.sort(counts)[::-1].astype(np.int64)


def interaction_rows(rng: np.random.Generator, n: int, k: int, counts: np.ndarray) -> np.ndarray:
    """``k`` rows (int64 ``[k]``) of an ``n``-row table whose popularity follows ``counts``
    (item counts, most popular first): item rank ``i`` of ``m`` stands for rows
    ``[i n / m, (i + 1) n / m)``, drawn uniformly within, and the rows are permuted, so the
    hottest x% of rows take the hottest x% of items' share."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or counts.min() < 0 or counts.sum() <= 0:
        raise ValueError("counts must be a non-empty vector of non-negative counts")
    if n < 1:
        raise ValueError(f"a table needs at least one row, got {n}")
    m = counts.size
    item = rng.choice(m, size=k, p=counts / counts.sum())
    lo = item * n // m
    hi = np.maximum((item + 1) * n // m, lo + 1)
    rank = np.minimum(lo + (rng.random(k) * (hi - lo)).astype(np.int64), n - 1)
    return rng.permutation(n)[rank].astype(np.int64)
