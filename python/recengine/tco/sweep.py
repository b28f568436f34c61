"""The TCO sweep: a fleet of models provisioned year by year, its headline figures, and which
inputs move them (a tornado).

A :class:`Fleet` serves every measured model (:class:`~.measure.Measured`) at ``qps`` with its
tables ``table_multiplier`` times DeepRecInfra's full scale (the public models are a few GB;
production models are hundreds of GB to terabytes, so the default 100 puts the eight models'
tables at 2.5 TB together; it is our choice, an input, and one of the tornado's bars).
:func:`fleet_rows` provisions each model's three clusters every year (:func:`~.growth.project`)
and adds the fleet's totals (``model: "fleet"``). :func:`headlines` reads off the figures
DisaggRec reports; :func:`sensitivity` halves and doubles one input at a time and records the
fleet's three-year saving of each disaggregated architecture over the monolithic one;
:func:`break_even_rpc_s` finds the RPC cost per query below which disaggregation pays, and
:func:`regimes` maps the saving over table size and load.

Example::

    >>> from recengine.tco.measure import Measured
    >>> m = Measured("rmc1", 165, 105_600, 1e-3, 2e7, 6.0, 6e5, 4.1)
    >>> rows = fleet_rows([m], rpc_s=2e-3, fleet=Fleet(qps=5e4))
    >>> sorted({r["model"] for r in rows})
    ['fleet', 'rmc1']
    >>> h = headlines(rows)
    >>> 0 <= h["monolithic_stranded_max"] < 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from .growth import ARCHITECTURES, Growth, project
from .inputs import NODE_TYPES, CostInputs, NodeType
from .measure import Measured
from .provision import InfeasibleError

__all__ = ["FACTORS", "REGIME_LOADS", "REGIME_MULTIPLIERS", "Fleet", "break_even_rpc_s",
           "fleet_rows", "headlines", "regimes", "sensitivity", "three_year_saving"]


@dataclass(frozen=True)
class Fleet:
    """The datacenter the sweep provisions.

    Args:
        qps: each model's peak load in the first year, queries/s.
        table_multiplier: each model's tables over DeepRecInfra's full scale.
        years: years of growth after the first.
        growth: the yearly growth rates.
        costs: the cost frame.
        nodes: the node types, keyed as :data:`~.inputs.NODE_TYPES`.
    """

    qps: float = 20_000.0
    table_multiplier: float = 100.0
    years: int = 3
    growth: Growth = field(default_factory=Growth)
    costs: CostInputs = field(default_factory=CostInputs)
    nodes: Mapping[str, NodeType] = field(default_factory=lambda: dict(NODE_TYPES))

    def __post_init__(self) -> None:
        if not self.qps > 0 or not self.table_multiplier > 0:
            raise ValueError("a fleet needs qps > 0 and table_multiplier > 0")
        if self.years < 1:
            raise ValueError(f"a TCO sweep needs at least one year of growth, got {self.years}")

    def with_settings(self, settings: Sequence[str]) -> Fleet:
        """This fleet with ``settings`` applied, each ``"costs.FIELD=VALUE"`` (a
        :class:`~.inputs.CostInputs` field) or ``"NODE.FIELD=VALUE"`` (a numeric field of the
        node type ``NODE`` of :data:`~.inputs.NODE_TYPES`).

        Example::

            >>> f = Fleet().with_settings(["memory.nic_gbps=100", "costs.pue=1.2"])
            >>> f.nodes["memory"].nic_gbps, f.costs.pue
            (100.0, 1.2)
        """
        costs, nodes = self.costs, dict(self.nodes)
        for item in settings:
            key, sep, text = item.partition("=")
            owner, dot, name = key.strip().partition(".")
            target: Any = costs if owner == "costs" else nodes.get(owner)
            value = getattr(target, name, None) if dot and sep else None
            if owner != "costs" and target is not None and name == "available" and sep:
                value = 0  # an optional count
            if target is None or isinstance(value, (bool, str)) or value is None:
                raise ValueError(
                    f"bad setting {item!r}: expected costs.FIELD=VALUE or NODE.FIELD=VALUE "
                    f"with NODE one of {', '.join(nodes)} and a numeric field")
            try:
                new = type(value)(float(text))
            except ValueError:
                raise ValueError(f"bad setting {item!r}: {text!r} is not a number") from None
            if owner == "costs":
                costs = replace(costs, **{name: new})
            else:
                nodes[owner] = replace(nodes[owner], **{name: new})
        return replace(self, costs=costs, nodes=nodes)


def fleet_rows(measured: Sequence[Measured], rpc_s: float, fleet: Fleet) -> list[dict[str, Any]]:
    """Every model's ``kind: "tco"`` rows (:func:`~.growth.project`), then the fleet's: per
    year and architecture the summed ``tco``, its ratios, and ``stranded_fraction`` as the
    summed stranded purchase over the summed purchase."""
    if not measured:
        raise ValueError("a fleet needs at least one measured model")
    rows: list[dict[str, Any]] = []
    for m in measured:
        rows += [dict(r, rpc_s=rpc_s) for r in
                 project(m.demand(fleet.qps, fleet.table_multiplier), m.capacity(rpc_s),
                         fleet.growth, fleet.years, fleet.costs, fleet.nodes)]
    total: dict[tuple[int, str], dict[str, float]] = {}
    for r in rows:
        t = total.setdefault((r["year"], r["architecture"]),
                             {"tco": 0.0, "capex_usd": 0.0, "stranded_usd": 0.0, "nodes": 0})
        for k in ("tco", "capex_usd", "stranded_usd"):
            t[k] += r[k]
        t["nodes"] += sum(r["nodes"].values())
    first = total[(0, "monolithic")]["tco"]
    for (year, arch), t in sorted(total.items(), key=lambda kv: (kv[0][0],
                                                                  ARCHITECTURES.index(kv[0][1]))):
        mono = total[(year, "monolithic")]["tco"]
        rows.append({"kind": "tco", "model": "fleet", "year": year, "architecture": arch,
                     "tco": t["tco"], "tco_ratio_vs_monolithic": t["tco"] / mono,
                     "tco_vs_first_monolithic": t["tco"] / first,
                     "stranded_fraction": t["stranded_usd"] / t["capex_usd"],
                     "capex_usd": t["capex_usd"], "stranded_usd": t["stranded_usd"],
                     "nodes": int(t["nodes"]), "rpc_s": rpc_s})
    return rows


def three_year_saving(rows: Sequence[dict[str, Any]], architecture: str,
                      model: str = "fleet") -> float:
    """One less ``architecture``'s TCO summed over the years over the monolithic cluster's."""
    def total(arch: str) -> float:
        return sum(r["tco"] for r in rows if r.get("kind") == "tco" and r["model"] == model
                   and r["architecture"] == arch)
    return 1 - total(architecture) / total("monolithic")


def headlines(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures DisaggRec reports, from ``kind: "tco"`` rows:

    * ``monolithic_growth_x``: the fleet's monolithic TCO in the last year over the first
      (``..._max``: the largest model's); DisaggRec: up to 12.4x;
    * ``monolithic_stranded_max``: the largest share of a monolithic purchase stranded, any
      year, the fleet's (``..._model_max``: any model's); DisaggRec: up to 30%;
    * ``disaggregated_saving``: the fleet's three-year saving over monolithic, and
      ``..._max`` the largest in any year or model; DisaggRec: up to 49.3%;
    * ``disaggregated_nmp_saving_range``: the fleet's yearly saving with NMP memory nodes over
      monolithic, least and most; DisaggRec: 21% to 43.6%.
    """
    tco = [r for r in rows if r.get("kind") == "tco"]
    if not tco:
        return {}
    fleet = [r for r in tco if r["model"] == "fleet"]
    last = max(r["year"] for r in fleet)
    mono = {(r["model"], r["year"]): r for r in tco if r["architecture"] == "monolithic"}
    models = sorted({r["model"] for r in tco} - {"fleet"})

    def growth_x(model: str) -> float:
        return mono[(model, last)]["tco"] / mono[(model, 0)]["tco"]

    def savings(arch: str, model: str = "fleet") -> list[float]:
        return [1 - r["tco_ratio_vs_monolithic"] for r in tco
                if r["architecture"] == arch and r["model"] == model]

    nmp = savings("disaggregated_nmp")
    return {
        "monolithic_growth_x": growth_x("fleet"),
        "monolithic_growth_x_max": max(growth_x(m) for m in models),
        "monolithic_stranded_max": max(r["stranded_fraction"] for r in fleet
                                       if r["architecture"] == "monolithic"),
        "monolithic_stranded_model_max": max(r["stranded_fraction"] for r in tco
                                             if r["architecture"] == "monolithic"),
        "disaggregated_saving": three_year_saving(rows, "disaggregated"),
        "disaggregated_saving_max": max(s for m in [*models, "fleet"]
                                        for s in savings("disaggregated", m)),
        "disaggregated_nmp_saving": three_year_saving(rows, "disaggregated_nmp"),
        "disaggregated_nmp_saving_range": (min(nmp), max(nmp)),
        "years": last,
    }


Change = Callable[[Sequence[Measured], float, Fleet, float],
                  tuple[Sequence[Measured], float, Fleet]]


def _measured(field_: str) -> Change:
    def change(ms: Sequence[Measured], rpc_s: float, fleet: Fleet,
               k: float) -> tuple[Sequence[Measured], float, Fleet]:
        return [replace(m, **{field_: getattr(m, field_) * k}) for m in ms], rpc_s, fleet
    return change


def _fleet(field_: str) -> Change:
    def change(ms: Sequence[Measured], rpc_s: float, fleet: Fleet,
               k: float) -> tuple[Sequence[Measured], float, Fleet]:
        return ms, rpc_s, replace(fleet, **{field_: getattr(fleet, field_) * k})
    return change


def _growth(field_: str) -> Change:
    def change(ms: Sequence[Measured], rpc_s: float, fleet: Fleet,
               k: float) -> tuple[Sequence[Measured], float, Fleet]:
        g = fleet.growth
        return ms, rpc_s, replace(fleet, growth=replace(g, **{field_: getattr(g, field_) * k}))
    return change


def _costs(field_: str) -> Change:
    def change(ms: Sequence[Measured], rpc_s: float, fleet: Fleet,
               k: float) -> tuple[Sequence[Measured], float, Fleet]:
        c = fleet.costs
        return ms, rpc_s, replace(fleet, costs=c.with_(**{field_: getattr(c, field_) * k}))
    return change


def _nodes(field_: str, kinds: Sequence[str]) -> Change:
    def change(ms: Sequence[Measured], rpc_s: float, fleet: Fleet,
               k: float) -> tuple[Sequence[Measured], float, Fleet]:
        nodes = {name: replace(n, **{field_: getattr(n, field_) * k}) if name in kinds else n
                 for name, n in fleet.nodes.items()}
        return ms, rpc_s, replace(fleet, nodes=nodes)
    return change


def _rpc(ms: Sequence[Measured], rpc_s: float, fleet: Fleet,
         k: float) -> tuple[Sequence[Measured], float, Fleet]:
    return ms, rpc_s * k, fleet


#: The inputs :func:`sensitivity` halves and doubles, by name.
FACTORS: dict[str, Change] = {
    "RPC cost per query": _rpc,
    "lookup rate per core": _measured("lookup_rate"),
    "dense time per query": _measured("dense_s"),
    "RecNMP speedup": _measured("nmp_speedup"),
    "bytes per query": _measured("bytes_per_query"),
    "table size": _fleet("table_multiplier"),
    "peak load": _fleet("qps"),
    "table growth rate": _growth("table_rate"),
    "compute growth rate": _growth("compute_rate"),
    "DRAM $/GB": _costs("dram_usd_per_gb"),
    "electricity $/kWh": _costs("electricity_usd_per_kwh"),
    "facility $/W": _costs("infrastructure_usd_per_w"),
    "network $/node": _costs("network_usd_per_node"),
    "NIC Gbit/s": _nodes("nic_gbps", tuple(NODE_TYPES)),
    "server price": _nodes("base_usd", ("monolithic", "compute")),
    "memory-node price": _nodes("base_usd", ("memory", "memory-nmp")),
    "NMP DIMM premium": _nodes("nmp_usd_per_gb", ("memory-nmp",)),
}


def sensitivity(measured: Sequence[Measured], rpc_s: float, fleet: Fleet,
                factors: Sequence[str] = tuple(FACTORS), low: float = 0.5,
                high: float = 2.0) -> list[dict[str, Any]]:
    """One ``kind: "sensitivity"`` row per input and disaggregated architecture: the fleet's
    three-year saving over monolithic (:func:`three_year_saving`) with the input at ``low``
    and ``high`` times its value, next to the ``baseline``; ``swing`` is the difference (None
    where a side cannot be provisioned: :class:`~.provision.InfeasibleError`)."""
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        raise ValueError(f"unknown inputs {unknown}; expected some of {', '.join(FACTORS)}")
    if not 0 < low < 1 < high:
        raise ValueError(f"need 0 < low < 1 < high, got {low}, {high}")
    archs = ARCHITECTURES[1:]
    base_rows = fleet_rows(measured, rpc_s, fleet)
    base = {a: three_year_saving(base_rows, a) for a in archs}
    out: list[dict[str, Any]] = []
    for name in factors:
        at = {k: _rows_or_none(*FACTORS[name](measured, rpc_s, fleet, k)) for k in (low, high)}
        for a in archs:
            lo, hi = (None if (rows := at[k]) is None else three_year_saving(rows, a)
                      for k in (low, high))
            swing = abs(hi - lo) if lo is not None and hi is not None else None
            out.append({"kind": "sensitivity", "input": name, "architecture": a,
                        "low": low, "high": high, "baseline": base[a],
                        "saving_low": lo, "saving_high": hi, "swing": swing})
    return out


def _rows_or_none(measured: Sequence[Measured], rpc_s: float,
                  fleet: Fleet) -> Optional[list[dict[str, Any]]]:
    """:func:`fleet_rows`, or None where a cluster cannot be built (a node type's
    ``available`` count, the availability target)."""
    try:
        return fleet_rows(measured, rpc_s, fleet)
    except InfeasibleError:
        return None


def break_even_rpc_s(measured: Sequence[Measured], fleet: Fleet, architecture: str,
                     most: float = 1.0, tolerance: float = 1e-6) -> Optional[float]:
    """The largest RPC cost per query (seconds of a compute-node core) at which
    ``architecture`` costs no more than the monolithic cluster over the years (the fleet's
    :func:`three_year_saving` >= 0), by bisection up to ``most``; None where it costs more even
    with free RPCs. A cost no cluster can be built at counts as a loss."""
    def saving(rpc_s: float) -> float:
        rows = _rows_or_none(measured, rpc_s, fleet)
        return -1.0 if rows is None else three_year_saving(rows, architecture)

    if saving(0.0) < 0:
        return None
    lo, hi = 0.0, most
    if saving(hi) >= 0:
        return hi
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if saving(mid) >= 0 else (lo, mid)
    return lo


#: :func:`regimes`' default grid: table multipliers and per-model loads (QPS).
REGIME_MULTIPLIERS: tuple[float, ...] = (10, 30, 100, 300, 1000, 3000)
REGIME_LOADS: tuple[float, ...] = (1e3, 3e3, 1e4, 3e4, 1e5)


def regimes(measured: Sequence[Measured], rpc_s: float, fleet: Fleet,
            multipliers: Sequence[float] = REGIME_MULTIPLIERS,
            loads: Sequence[float] = REGIME_LOADS) -> list[dict[str, Any]]:
    """Where disaggregation pays: one ``kind: "regime"`` row per table multiplier, load and
    disaggregated architecture, with the fleet's three-year ``saving`` over monolithic (the
    fleet's other inputs as given; None where a cluster cannot be built). Large tables at a
    light load favour memory nodes sized to the tables; a heavy load of small tables favours
    whole-model servers."""
    if not multipliers or not loads:
        raise ValueError("a regime grid needs at least one multiplier and one load")
    out: list[dict[str, Any]] = []
    for mult in multipliers:
        for qps in loads:
            rows = _rows_or_none(measured, rpc_s,
                                 replace(fleet, table_multiplier=mult, qps=qps))
            out += [{"kind": "regime", "architecture": a, "table_multiplier": float(mult),
                     "fleet_qps": float(qps),
                     "saving": None if rows is None else three_year_saving(rows, a)}
                    for a in ARCHITECTURES[1:]]
    return out
