"""The Expert Buffering study behind ``recengine moe``.

One MoE layer (``num_experts`` experts of ``d_model -> d_hidden -> d_model``) and one routing
trace (synthetic, :func:`recengine.moe.traces.synthetic`, or recorded from the layer's own gate
on random tokens). Three parts:

* cache rows (``kind="cache"``), per policy and slot count: the miss rate over the whole trace
  (replayed without data, each batch's experts fetched in rounds of at most ``slots``, as
  the buffer does) next to Belady's MIN at the same slots, the bytes the misses copy,
  the static memory saved (all experts resident / ``slots`` resident, expert weights plus the
  gate) and the throughput of the buffered layer relative to all experts resident, measured
  on the first ``timed_batches`` batches of the trace (the real layer, the trace's routing,
  random tokens; the two timed in turn three times, medians);
* gating rows (``kind="gating"``): dynamic vs static gating on the same ``gating_tokens``
  tokens (a prefill-sized batch; the cache part uses small decode-sized batches), time per
  batch and the bytes of the dispatch intermediates (static: the ``[S, E, C]`` masks and the
  padded expert inputs, hidden and outputs; dynamic: the sort and each expert's own rows);
* placement rows (``kind="placement"``): the busiest device's share of a batch's choices,
  averaged, for the blocked placement and after greedy and anti-correlation placement.

Example::

    >>> rows = run_study(MoEStudyConfig(num_experts=8, d_model=16, d_hidden=32, batches=10,
    ...                                 tokens=16, slots=(2, 4), timed_batches=2,
    ...                                 gating_tokens=32))
    >>> {r["kind"] for r in rows} == {"cache", "gating", "placement"}
    True
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..cache import POLICIES, simulate
from . import placement, traces
from .buffer import ExpertBuffer
from .layer import MoE, dispatch_dynamic

__all__ = ["Config", "MoEStudyConfig", "iter_study", "plot_study", "run_study", "summarize_study"]


@dataclass
class MoEStudyConfig:
    """What :func:`run_study` measures (see the module's note)."""

    num_experts: int = 64
    d_model: int = 256
    d_hidden: int = 1024
    top_k: int = 2
    batches: int = 300
    tokens: int = 8
    trace: str = "synthetic"
    zipf_s: float = 1.0
    locality: float = 0.5
    slots: Sequence[int] = (8, 16, 24, 32, 48)
    policies: Sequence[str] = POLICIES
    timed_batches: int = 50
    gating_tokens: int = 2048
    devices: int = 8
    capacity_factor: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trace not in ("synthetic", "recorded"):
            raise ValueError(f"trace must be 'synthetic' or 'recorded', got {self.trace!r}")
        for p in self.policies:
            if p not in POLICIES:
                raise ValueError(f"unknown policy {p!r}; expected some of {', '.join(POLICIES)}")
        if not self.slots or min(self.slots) < 1:
            raise ValueError("slots needs one or more counts >= 1")
        if min(self.num_experts, self.batches, self.tokens, self.timed_batches,
               self.gating_tokens, self.devices, self.d_model, self.d_hidden, self.top_k) < 1:
            raise ValueError("num_experts, d_model, d_hidden, top_k, batches, tokens, "
                             "timed_batches, gating_tokens and devices must be >= 1")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed the {self.num_experts} experts")
        for name, value, most in (("num_experts", self.num_experts, MAX_EXPERTS),
                                  ("tokens", self.tokens, MAX_TOKENS),
                                  ("gating_tokens", self.gating_tokens, MAX_TOKENS)):
            if value > most:
                raise ValueError(f"{name} must be at most {most}, got {value}")
        if self.batches * self.tokens > MAX_ROUTED:
            raise ValueError(f"the trace routes {self.batches} batches of {self.tokens} tokens; "
                             f"at most {MAX_ROUTED} tokens in all")
        if not (math.isfinite(self.zipf_s) and self.zipf_s >= 0):
            raise ValueError(f"zipf_s must be a finite number >= 0, got {self.zipf_s}")
        if not 0 <= self.locality <= 1:
            raise ValueError(f"locality must be in [0, 1], got {self.locality}")
        need = self.num_experts * 2 * self.d_model * self.d_hidden * 4
        have = available_memory()
        if have is not None and need > have // 2:
            raise ValueError(f"the layer's {self.num_experts} experts of {self.d_model}x"
                             f"{self.d_hidden} take {need / 2**30:.1f} GiB; this machine has "
                             f"{have / 2**30:.1f} GiB available (half of it may be used)")


#: The study's config, as ``recengine.studies`` looks it up.
Config = MoEStudyConfig


_REPEATS = 3
#: Limits of the study's sizes (each far past what it is meant for; larger ones only hang).
MAX_EXPERTS = 65536
MAX_TOKENS = 1 << 20
MAX_ROUTED = 10**8


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _median_time(fn: Callable[[], Any], repeats: int = _REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gating_bytes(layer: MoE, s: int, kind: str, experts: torch.Tensor) -> int:
    """Bytes of the dispatch intermediates of one batch (float32)."""
    d, h, e, k = layer.d_model, layer.d_hidden, layer.num_experts, layer.top_k
    if kind == "static":
        c = layer.capacity(s)
        return 4 * (2 * s * e * c + e * c * (2 * d + h))
    counts = torch.bincount(experts.reshape(-1), minlength=e)
    return 8 * 3 * s * k + 4 * int(counts.sum()) * (2 * d + h)


def iter_study(config: MoEStudyConfig, status: Callable[[str], None] = lambda _m: None
               ) -> Iterator[dict[str, Any]]:
    """Run the study, yielding rows as they are measured (see :func:`run_study`)."""
    torch.manual_seed(config.seed)
    layer = MoE(config.d_model, config.d_hidden, config.num_experts, top_k=config.top_k).eval()
    rng = torch.Generator().manual_seed(config.seed)
    if config.trace == "recorded":
        status("recording the gate's routing")
        inputs = [torch.randn(config.tokens, config.d_model, generator=rng)
                  for _ in range(config.batches)]
        trace = traces.record(layer, inputs)
    else:
        status("drawing a synthetic routing trace")
        trace = traces.synthetic(config.num_experts, config.batches, config.tokens,
                                 config.top_k, config.zipf_s, config.locality, config.seed)
    sets = traces.active_sets(trace)
    blob = layer._layout["size"] * 4
    gate_bytes = layer.gate.weight.numel() * 4
    resident_bytes = gate_bytes + config.num_experts * blob
    timed = trace[:config.timed_batches]
    xs = [torch.randn(config.tokens, config.d_model, generator=rng) for _ in timed]
    w = torch.full((config.tokens, config.top_k), 1.0 / config.top_k)
    tensors = [(x, torch.from_numpy(b)) for x, b in zip(xs, timed)]

    def resident() -> None:
        for x, ex in tensors:
            dispatch_dynamic(x, ex, w, config.num_experts, layer.expert)

    with torch.no_grad():
        for slots in sorted(set(min(s, config.num_experts) for s in config.slots)):
            belady = _simulate_rounds("belady", slots, sets, config.num_experts)
            for policy in config.policies:
                status(f"{policy}, {slots} slots")
                sim = _simulate_rounds(policy, slots, sets, config.num_experts)
                buf = ExpertBuffer(slots=slots, policy=policy)
                layer.attach_buffer(buf)
                try:
                    if policy == "belady":
                        assert buf.cache is not None
                        # The timed batches' rounds, once per timing repeat.
                        buf.cache.set_future(_round_trace(traces.active_sets(timed), slots)
                                             * _REPEATS)

                    def buffered(buf: ExpertBuffer = buf) -> None:
                        for x, ex in tensors:
                            buf.run(layer, x, ex, w)

                    # Alternate the two, so that a slow spell of the machine falls on both.
                    pairs = [(_median_time(resident, 1), _median_time(buffered, 1))
                             for _ in range(_REPEATS)]
                    resident_s = statistics.median(p[0] for p in pairs)
                    buffered_s = statistics.median(p[1] for p in pairs)
                finally:
                    layer.detach_buffer()
                yield {
                    "kind": "cache",
                    "policy": policy,
                    "slots": slots,
                    "experts": config.num_experts,
                    "miss_rate": sim["miss_rate"],
                    "belady_miss_rate": belady["miss_rate"],
                    "misses": sim["misses"],
                    "bytes_copied": sim["misses"] * blob,
                    "memory_reduction": resident_bytes / (gate_bytes + slots * blob),
                    "throughput_ratio": resident_s / buffered_s,
                    "resident_ms_per_batch": resident_s / len(tensors) * 1e3,
                    "buffered_ms_per_batch": buffered_s / len(tensors) * 1e3,
                }
        status("dynamic vs static gating")
        x = torch.randn(config.gating_tokens, config.d_model, generator=rng)
        for gating in ("dynamic", "static"):
            layer.gating = gating
            layer.capacity_factor = config.capacity_factor
            secs = _median_time(lambda: layer(x), repeats=5)
            yield {
                "kind": "gating",
                "gating": gating,
                "tokens": config.gating_tokens,
                "ms_per_batch": secs * 1e3,
                "intermediate_mb": _gating_bytes(layer, config.gating_tokens, gating,
                                                 layer.last_routing) / 2**20,
                "dropped_fraction": layer.last_dropped / (config.gating_tokens * config.top_k),
            }
        layer.gating = "dynamic"
    status("placing experts on devices")
    loads = traces.expert_loads(trace, config.num_experts)
    corr = placement.coactivation(trace, config.num_experts)
    for method, assignment in (
            ("blocked", placement.blocked(config.num_experts, config.devices)),
            ("greedy", placement.place(loads, config.devices)),
            ("anticorrelation", placement.place(loads, config.devices,
                                                method="anticorrelation",
                                                correlation=corr))):
        yield {"kind": "placement", "method": method, "devices": config.devices,
               "max_device_load": placement.max_device_load(assignment, trace)}


def _round_trace(sets: Sequence[Sequence[int]], slots: int) -> list[list[int]]:
    """Each batch's experts cut into the rounds of at most ``slots`` a buffer fetches."""
    out = []
    for s in sets:
        out += [list(s[i:i + slots]) for i in range(0, len(s), slots)] or [[]]
    return out


def _simulate_rounds(policy: str, slots: int, sets: Sequence[Sequence[int]],
                     num_experts: int) -> dict[str, float]:
    return simulate(policy, slots, _round_trace(sets, slots), num_experts)


def run_study(config: MoEStudyConfig) -> list[dict[str, Any]]:
    """All rows (see the module's note). Cache rows have at least ``policy``, ``slots``,
    ``miss_rate``, ``memory_reduction`` and ``throughput_ratio``."""
    return list(iter_study(config))


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per slot count, each policy's miss rate and Belady's; dynamic/static time and memory;
    the placement loads."""
    cache = [r for r in rows if r["kind"] == "cache"]
    by_slots: dict[int, dict[str, float]] = {}
    for r in cache:
        by_slots.setdefault(r["slots"], {})[r["policy"]] = r["miss_rate"]
    gating = {r["gating"]: r for r in rows if r["kind"] == "gating"}
    out: dict[str, Any] = {"miss_rates": by_slots}
    if {"dynamic", "static"} <= set(gating):
        out["static_over_dynamic_time"] = gating["static"]["ms_per_batch"] / \
            gating["dynamic"]["ms_per_batch"]
        out["static_over_dynamic_memory"] = gating["static"]["intermediate_mb"] / \
            max(gating["dynamic"]["intermediate_mb"], 1e-12)
    out["placement"] = {r["method"]: r["max_device_load"] for r in rows
                        if r["kind"] == "placement"}
    return out


def plot_study(rows: Sequence[dict[str, Any]], path: str,
               config: Optional[MoEStudyConfig] = None) -> None:
    """Miss rate and throughput ratio (with its 1x parity line) against slots, one line per
    policy."""
    from ..studies._output import figure, save_figure

    cache = [r for r in rows if r["kind"] == "cache"]
    fig, axes = figure(2, columns=2, size=(5.5, 4.0))
    for policy in dict.fromkeys(r["policy"] for r in cache):
        mine = sorted((r for r in cache if r["policy"] == policy), key=lambda r: r["slots"])
        xs = [r["slots"] for r in mine]
        axes[0].plot(xs, [r["miss_rate"] for r in mine], marker="o", label=policy)
        axes[1].plot(xs, [r["throughput_ratio"] for r in mine], marker="o", label=policy)
    axes[0].set_title("miss rate (lower is better)")
    axes[0].set_ylabel("misses / expert uses")
    axes[1].axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="all resident")
    axes[1].set_title("throughput, buffered / all experts resident")
    axes[1].set_ylabel("throughput ratio (x)")
    for ax in axes:
        ax.set_xlabel("expert slots (experts resident)")
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    setting = ("" if config is None else
               f": {config.num_experts} experts of {config.d_model}x{config.d_hidden}, top-"
               f"{config.top_k}, {config.batches} batches of {config.tokens} tokens")
    save_figure(fig, path, f"Expert Buffering{setting}")


def config_dict(config: MoEStudyConfig) -> dict[str, Any]:
    d = asdict(config)
    d["slots"], d["policies"] = list(config.slots), list(config.policies)
    return d

