"""``recengine moe``: Expert Buffering's cache policies and sizes, dynamic against static
gating, and expert placement (:mod:`recengine.moe.study`)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a

__all__ = ["STUDY", "MoEStudy"]


class MoEStudy(Study):
    runner = "recengine.moe.study"
    name = "moe"
    help = "Expert Buffering: cache policies and sizes, dynamic vs static gating, placement"
    description = (
        "Replay an MoE routing trace (synthetic Zipf with temporal locality, or recorded "
        "from the layer's gate) through expert caches of each policy and size, next to "
        "Belady's MIN; time the buffered layer against all experts resident; compare "
        "dynamic with static (capacity) gating; and place experts on devices for load "
        "balance.")
    options = (
        Option("--experts", "experts in the layer (default: 64)", dest="num_experts",
               parse=a.int_in(1, 65536)),
        Option("--d-model", "token width (default: 256)", parse=a.positive_int),
        Option("--d-hidden", "expert hidden width (default: 1024; 2 MiB per expert)",
               parse=a.positive_int),
        Option("--top-k", "experts per token", parse=a.positive_int),
        Option("--batches", "batches in the trace (default: 300)", parse=a.positive_int),
        Option("--tokens", "tokens per batch of the trace (default: 8, decode-sized)",
               parse=a.int_in(1, 1 << 20)),
        Option("--trace", "where the routing comes from (default: synthetic)",
               choices=("synthetic", "recorded")),
        Option("--zipf", "synthetic trace's Zipf exponent (default: 1.0)", dest="zipf_s",
               parse=a.float_in(0, 1e6)),
        Option("--locality", "synthetic trace's temporal locality in [0, 1] (default: 0.5)",
               parse=a.float_in(0, 1)),
        Option("--slots", "comma list of cache sizes in experts (default: 8,16,24,32,48)",
               parse=a.comma_list(a.positive_int, "slot count")),
        Option("--policies", "comma list of policies (default: inactive_lifo,lru,fifo,lfu,"
                             "belady)", parse=a.comma_list(a.one_of("cache", "POLICIES"),
                                                           "policy")),
        Option("--timed-batches", "batches the throughput is timed on (default: 50)",
               parse=a.positive_int),
        Option("--gating-tokens", "tokens of the dynamic vs static gating batch (default: "
                                  "2048)", parse=a.int_in(1, 1 << 20)),
        Option("--devices", "devices to place experts on (default: 8)", parse=a.positive_int),
        Option("--seed", "seed of the layer and trace", parse=a.seed),
    )
    quick: ClassVar[Mapping[str, Any]] = {
        "num_experts": 6, "d_model": 8, "d_hidden": 8, "batches": 10, "tokens": 3,
        "slots": [2, 6], "policies": ["inactive_lifo", "fifo"], "timed_batches": 2,
        "gating_tokens": 16, "devices": 2}
    needs: ClassVar[Mapping[str, str]] = {"torch": 'pip install "recengine[torch]"'}
    plot_help = "save miss rate and throughput ratio against slots per policy"

    def total(self, config: Any) -> int:
        return len({min(s, config.num_experts) for s in config.slots}) * len(config.policies) + 4

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        title = (f"{config.num_experts} experts of {config.d_model}->{config.d_hidden}, top-"
                 f"{config.top_k}, {config.batches} batches of {config.tokens} tokens "
                 f"({config.trace} trace)")
        cache = [r for r in rows if r["kind"] == "cache"]
        body = [[r["policy"], str(r["slots"]), f"{r['miss_rate']:.3f}",
                 f"{r['belady_miss_rate']:.3f}", f"{r['bytes_copied'] / 2**20:.0f}",
                 f"{r['memory_reduction']:.2f}x", f"{r['throughput_ratio']:.2f}x"]
                for r in cache]
        sections = [i for i in range(1, len(cache)) if cache[i]["slots"] != cache[i - 1]["slots"]]
        table = Table(title, ["policy", "slots", "miss rate", "Belady's miss rate",
                              "copied MiB", "memory saved", "throughput vs resident"],
                      body, sections=sections)
        lines = [f"{r['gating']} gating, {r['tokens']} tokens: {r['ms_per_batch']:.1f} ms, "
                 f"intermediates {r['intermediate_mb']:.1f} MiB, dropped "
                 f"{r['dropped_fraction']:.1%}" for r in rows if r["kind"] == "gating"]
        lines.append("max device load per batch: " + ", ".join(
            f"{m} {v:.3f}" for m, v in summary["placement"].items()))
        return Report(tables=[table], lines=lines)


STUDY = MoEStudy()
