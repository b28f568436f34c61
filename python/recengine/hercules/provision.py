"""Hercules' second stage: provision a cluster of heterogeneous servers for diurnal load.

Inputs: each model's load (queries/s) in each time slot (:func:`diurnal` makes the daily
shape), the server types (:class:`ServerType`: power, how many exist) and what one server of
each type serves of each model at its latency target (``capacity[(model, server)]``, queries/s:
the first stage's search result; a missing pair is a server type that cannot serve the model).

**Formulation** (ours: the Hercules paper's exact one is not public). Per slot ``t``, model
``m`` and type ``s`` an integer ``x[t, m, s] >= 0`` of servers of type ``s`` given to ``m``.
Every model's load with ``headroom`` is met, ``sum_s capacity[m, s] * x[t, m, s] >= (1 +
headroom) * load[m, t]``, and no type is over-used, ``sum_m x[t, m, s] <= available[s]``. The
objective is the servers provisioned (``"capacity"``) or their peak power (``"power"``),
summed over the slots. With ``max_switches``, at most that many servers are newly assigned to
a (model, type) from one slot to the next (the day wraps around: slot 0 follows the last), so
the plan cannot churn the cluster every hour. It is solved exactly by scipy's ``milp``
(HiGHS).

Two baselines, defined here:

* **greedy**: slot by slot, models in order of their peak load (largest first); each takes
  servers of its own best type (most queries/s per server for ``"capacity"``, least peak power
  per query/s for ``"power"``) until its load is met, and falls back to its next best type when
  a type runs out.
* **oblivious** (heterogeneity-oblivious): every model on one server type, the type that needs
  the least over the day among those that can serve every load alone.

Example::

    >>> servers = [ServerType("cpu", idle_w=100, peak_w=300),
    ...            ServerType("gpu", idle_w=200, peak_w=700, available=2)]
    >>> capacity = {("rmc1", "cpu"): 200.0, ("rmc1", "gpu"): 900.0, ("ncf", "cpu"): 3000.0}
    >>> loads = {"rmc1": diurnal(1500.0), "ncf": diurnal(5000.0, phase=6)}
    >>> best = provision(loads, capacity, servers)
    >>> best.servers <= greedy(loads, capacity, servers).servers
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["OBJECTIVES", "Plan", "ServerType", "diurnal", "greedy", "oblivious", "provision"]

#: What provisioning minimises: servers provisioned, or their peak power.
OBJECTIVES: tuple[str, ...] = ("capacity", "power")


@dataclass(frozen=True)
class ServerType:
    """A kind of server: ``idle_w`` and ``peak_w`` (W, idle and fully loaded), how many exist
    (``available``; ``None``: as many as needed), and what it holds (documentation and the
    first stage's inputs: ``cores``, ``memory_gb``, ``device``, ``price``)."""

    name: str
    idle_w: float
    peak_w: float
    available: Optional[int] = None
    cores: int = 16
    memory_gb: float = 128.0
    device: str = "cpu"
    price: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.idle_w <= self.peak_w and math.isfinite(self.peak_w)) \
                or self.peak_w <= 0:
            raise ValueError(f"server {self.name!r}: need 0 <= idle_w <= peak_w, peak_w > 0 "
                             f"(got {self.idle_w}, {self.peak_w})")
        if self.available is not None and self.available < 0:
            raise ValueError(f"server {self.name!r}: available must be >= 0, got "
                             f"{self.available}")


def diurnal(peak: float, slots: int = 24, trough: float = 0.35, phase: float = 18.0
            ) -> np.ndarray:
    """A day's load, ``[slots]`` queries/s: a cosine from ``trough * peak`` to ``peak``,
    highest at hour ``phase`` (0-24).

    Example::

        >>> load = diurnal(1000.0, phase=18)
        >>> int(load.argmax()), round(float(load.min()))
        (18, 350)
    """
    if not (peak >= 0 and math.isfinite(peak)) or slots < 1 or not 0 <= trough <= 1:
        raise ValueError(f"need peak >= 0, slots >= 1 and trough in [0, 1] (got {peak}, "
                         f"{slots}, {trough})")
    hours = np.arange(slots) * 24.0 / slots
    shape = 0.5 * (1 + np.cos(2 * np.pi * (hours - phase) / 24.0))
    return peak * (trough + (1 - trough) * shape)


@dataclass
class Plan:
    """A provisioning: ``counts[t, m, s]`` servers of type ``servers[s]`` for model
    ``models[m]`` in slot ``t``."""

    scheduler: str
    models: list[str]
    server_types: list[ServerType]
    counts: np.ndarray
    loads: np.ndarray
    capacity: np.ndarray = field(repr=False)

    @property
    def servers(self) -> int:
        """Servers provisioned, summed over the slots (server-slots)."""
        return int(self.counts.sum())

    @property
    def peak_servers(self) -> int:
        """The most servers provisioned in any one slot."""
        return int(self.counts.sum(axis=(1, 2)).max(initial=0))

    @property
    def power_w(self) -> float:
        """Provisioned power: the peak power of the servers provisioned, averaged over the
        slots (W)."""
        peak = np.array([s.peak_w for s in self.server_types])
        return float((self.counts * peak).sum() / max(len(self.counts), 1))

    @property
    def energy_kwh(self) -> float:
        """Energy over the day when a slot is an hour of ``24 / slots`` hours: each model's
        servers share its load, a server drawing ``idle + (peak - idle) * utilisation``."""
        idle = np.array([s.idle_w for s in self.server_types])
        peak = np.array([s.peak_w for s in self.server_types])
        served = (self.counts * self.capacity[None]).sum(axis=2)  # [t, m]
        util = np.divide(self.loads.T, served, out=np.zeros_like(served), where=served > 0)
        util = np.minimum(util, 1.0)[:, :, None]
        watts = (self.counts * (idle + (peak - idle) * util)).sum()
        return float(watts * 24.0 / max(len(self.counts), 1) / 1e3)

    @property
    def switches(self) -> np.ndarray:
        """Per slot, the servers newly assigned to a (model, type) since the slot before (the
        day wraps around), ``[slots]``."""
        before = np.roll(self.counts, 1, axis=0)
        return np.maximum(self.counts - before, 0).sum(axis=(1, 2))

    def cost(self, objective: str) -> float:
        """The objective's value: servers provisioned or their peak power, over the slots."""
        _check_objective(objective)
        return float(self.servers if objective == "capacity" else self.power_w * len(self.counts))

    def meets(self, headroom: float = 0.0) -> bool:
        """Whether every model's load (with ``headroom``) is served in every slot and no type
        is used past its count."""
        served = (self.counts * self.capacity[None]).sum(axis=2)
        avail = np.array([np.inf if s.available is None else s.available
                          for s in self.server_types])
        return bool(np.all(served >= (1 + headroom) * self.loads.T - 1e-6)
                    and np.all(self.counts.sum(axis=1) <= avail))


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of "
                         f"{', '.join(OBJECTIVES)}")


def _inputs(loads: Mapping[str, Sequence[float]], capacity: Mapping[tuple[str, str], float],
            servers: Sequence[ServerType], headroom: float
            ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Models, loads ``[m, t]`` with headroom, capacity ``[m, s]``, availability ``[s]``;
    checked, with a clear error for a load nothing can serve."""
    if not servers:
        raise ValueError("no server types given")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"server type names repeat: {names}")
    if not (headroom >= 0 and math.isfinite(headroom)):
        raise ValueError(f"headroom must be a finite number >= 0, got {headroom}")
    models = list(loads)
    if not models:
        raise ValueError("no model loads given")
    lengths = {len(loads[m]) for m in models}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every model needs a load for the same slots (got {sorted(lengths)})")
    load = np.array([np.asarray(loads[m], dtype=np.float64) for m in models])
    if not np.all(np.isfinite(load)) or np.any(load < 0):
        raise ValueError("loads must be finite and >= 0")
    unknown = {k for k in capacity if k[0] not in models or k[1] not in names}
    if unknown:
        raise ValueError(f"capacity names unknown (model, server) pairs: {sorted(unknown)}")
    cap = np.zeros((len(models), len(servers)))
    for (m, s), q in capacity.items():
        if not (q >= 0 and math.isfinite(q)):
            raise ValueError(f"capacity of {m} on {s} must be finite and >= 0, got {q}")
        cap[models.index(m), names.index(s)] = q
    avail = np.array([np.inf if s.available is None else s.available for s in servers])
    for i, m in enumerate(models):
        if load[i].max() > 0 and not np.any((cap[i] > 0) & (avail > 0)):
            raise ValueError(f"no available server type can serve {m} (its capacity is 0 or "
                             f"missing on every type with servers)")
    return models, load * (1 + headroom), cap, avail


def _plan(name: str, models: list[str], servers: Sequence[ServerType], counts: np.ndarray,
          need: np.ndarray, headroom: float, cap: np.ndarray) -> Plan:
    """A plan of ``counts`` for the loads in ``need``, which include ``headroom``."""
    return Plan(name, models, list(servers), counts.astype(np.int64), need / (1 + headroom), cap)


def greedy(loads: Mapping[str, Sequence[float]], capacity: Mapping[tuple[str, str], float],
           servers: Sequence[ServerType], objective: str = "capacity",
           headroom: float = 0.0) -> Plan:
    """The greedy baseline (see the module's note)."""
    _check_objective(objective)
    models, need, cap, avail = _inputs(loads, capacity, servers, headroom)
    peak = np.array([s.peak_w for s in servers])
    slots = need.shape[1]
    counts = np.zeros((slots, len(models), len(servers)))
    order = np.argsort(-need.max(axis=1), kind="stable")
    for t in range(slots):
        left = avail.copy()
        for m in order:
            rest = need[m, t]
            usable = [s for s in range(len(servers)) if cap[m, s] > 0]
            # Its own best type first: most queries/s a server, or least peak W per query/s.
            score = -cap[m] if objective == "capacity" else peak / np.where(cap[m] > 0, cap[m], 1)
            for s in sorted(usable, key=lambda s: (score[s], s)):
                if rest <= 1e-9:
                    break
                k = min(math.ceil(rest / cap[m, s] - 1e-9), left[s])
                counts[t, m, s] += k
                left[s] -= k
                rest -= k * cap[m, s]
            if rest > 1e-9:
                raise ValueError(f"greedy: slot {t}: {models[m]} needs {need[m, t]:.0f} "
                                 f"queries/s; the servers left serve only "
                                 f"{need[m, t] - rest:.0f}")
    return _plan("greedy", models, servers, counts, need, headroom, cap)


def oblivious(loads: Mapping[str, Sequence[float]], capacity: Mapping[tuple[str, str], float],
              servers: Sequence[ServerType], objective: str = "capacity",
              headroom: float = 0.0) -> Plan:
    """The heterogeneity-oblivious baseline: every model on one server type (see the
    module's note)."""
    _check_objective(objective)
    models, need, cap, avail = _inputs(loads, capacity, servers, headroom)
    best: Optional[Plan] = None
    for s in range(len(servers)):
        if np.any((need.max(axis=1) > 0) & (cap[:, s] <= 0)):
            continue
        k = np.ceil(np.divide(need, cap[:, [s]], out=np.zeros_like(need),
                              where=cap[:, [s]] > 0) - 1e-9)  # [m, t]
        if np.any(k.sum(axis=0) > avail[s]):
            continue
        counts = np.zeros((need.shape[1], len(models), len(servers)))
        counts[:, :, s] = k.T
        plan = _plan("oblivious", models, servers, counts, need, headroom, cap)
        if best is None or plan.cost(objective) < best.cost(objective):
            best = plan
    if best is None:
        raise ValueError("oblivious: no single server type can serve every model's load")
    return best


def provision(loads: Mapping[str, Sequence[float]], capacity: Mapping[tuple[str, str], float],
              servers: Sequence[ServerType], objective: str = "capacity",
              headroom: float = 0.0, max_switches: Optional[int] = None,
              time_limit_s: float = 60.0) -> Plan:
    """The least servers (or peak power) that meet every model's load in every slot, as an
    integer program (see the module's note); ``max_switches`` limits the servers newly
    assigned from one slot to the next.

    Raises:
        ValueError: a load no mix of the available servers can serve (naming the model or the
            slot), or no plan within ``max_switches``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]
    from scipy.sparse import coo_matrix  # type: ignore[import-untyped]

    _check_objective(objective)
    if max_switches is not None and max_switches < 0:
        raise ValueError(f"max_switches must be >= 0, got {max_switches}")
    models, need, cap, avail = _inputs(loads, capacity, servers, headroom)
    n_m, n_s, slots = len(models), len(servers), need.shape[1]
    n_x = slots * n_m * n_s
    limit = float(max_switches) if max_switches is not None else np.inf
    switching = max_switches is not None and slots > 1
    n = n_x * (2 if switching else 1)

    def xi(t: int, m: int, s: int) -> int:
        return (t * n_m + m) * n_s + s

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lb: list[float] = []
    ub: list[float] = []

    def add(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lb)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        lb.append(low)
        ub.append(high)

    for t in range(slots):
        for m in range(n_m):
            if need[m, t] > 0:
                add([(xi(t, m, s), cap[m, s]) for s in range(n_s) if cap[m, s] > 0],
                    need[m, t], np.inf)
        for s in range(n_s):
            if np.isfinite(avail[s]):
                add([(xi(t, m, s), 1.0) for m in range(n_m)], -np.inf, avail[s])
    if switching:
        for t in range(slots):
            for m in range(n_m):
                for s in range(n_s):
                    # y >= x[t] - x[t - 1]: the servers newly given to (m, s) at slot t.
                    add([(n_x + xi(t, m, s), 1.0), (xi(t, m, s), -1.0),
                         (xi((t - 1) % slots, m, s), 1.0)], 0.0, np.inf)
            add([(n_x + xi(t, m, s), 1.0) for m in range(n_m) for s in range(n_s)],
                -np.inf, limit)
    weight = np.ones(n_s) if objective == "capacity" else np.array([s.peak_w for s in servers])
    c = np.zeros(n)
    c[:n_x] = np.tile(weight, slots * n_m)
    # A server a model cannot use is never given to it.
    upper = np.full(n, np.inf)
    upper[:n_x] = np.where(np.tile(cap.reshape(-1), slots) > 0, np.inf, 0.0)
    a = coo_matrix((vals, (rows, cols)), shape=(len(lb), n)).tocsr()
    integrality = np.zeros(n)
    integrality[:n_x] = 1
    res = milp(c, integrality=integrality, bounds=Bounds(np.zeros(n), upper),
               constraints=LinearConstraint(a, lb, ub),
               options={"time_limit": time_limit_s})
    if res.x is None:
        alone = (cap * np.where(np.isfinite(avail), avail, 1e30)).sum(axis=1)  # [m]
        short = [(t, m) for t in range(slots) for m in range(n_m) if alone[m] < need[m, t]]
        if short:
            t, m = short[0]
            why = (f"slot {t}: {models[m]} needs {need[m, t]:.0f} queries/s but every "
                   f"available server together serves {alone[m]:.0f}")
        else:
            why = "the available servers cannot serve every model's load at once"
            if switching:
                why += f" within {max_switches} switches a slot"
        raise ValueError(f"no provisioning plan: {why} ({res.message})")
    counts = np.rint(res.x[:n_x]).reshape(slots, n_m, n_s)
    return _plan("hercules", models, servers, counts, need, headroom, cap)
