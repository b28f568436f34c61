"""The ``recengine`` command line.

``recengine bench`` measures pooling for the DeepRecInfra models against torch and numpy on
this machine (and the embedding stage's forward and training step as torch modules against
torch's) and prints a table and the target metrics; ``recengine info`` shows the build.

Example::

    $ recengine bench --models rmc1,wnd --batches 64,1024 --dtypes fp32
    $ recengine bench --ops forward,forward_backward --grad dense
    $ recengine bench --quick --json > rows.json
    $ python -m recengine info
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

__all__ = ["main"]

_QUICK = {  # a smoke run: one tiny model, two small batches, a few calls per measurement
    "models": ["rmc1"],
    "batches": [1, 16],
    "table_mb": 2.0,
    "repeats": 3,
    "rounds": 1,
    "budget": 0.02,
    "evict_mb": 4.0,
    "fresh_mb": 0.5,
}


# --------------------------------------------------------------------------------------------
# argument parsing


def _comma_list(kind: Callable[[str], Any], name: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {name} list")
        try:
            return [kind(t) for t in items]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad {name} list {text!r}: {exc}") from None
    return parse


def _model(text: str) -> str:
    from .shapes import resolve_model
    return resolve_model(text)


def _model_or_all(text: str) -> str:
    return "all" if text.strip().lower() == "all" else _model(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value


def _core_count(text: str) -> int:
    value = _positive_int(text)
    if value > 1024:
        raise ValueError(f"{value} is more than the 1024 cores the simulator models")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text} is not a positive number")
    return value


def _arg_positive_int(text: str) -> int:
    try:
        return _positive_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_positive_float(text: str) -> float:
    try:
        return _positive_float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (the error names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high}]")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number in [{low:g}, "
                                             f"{high:g}]")
        return value

    return parse


#: Seeds: any non-negative 63-bit integer.
_seed = _int_in(0, 2**63 - 1)


def _dtype(text: str) -> str:
    from .bench import BENCH_DTYPES
    if text.lower() not in BENCH_DTYPES:
        raise ValueError(f"{text!r} is not one of {', '.join(BENCH_DTYPES)}")
    return text.lower()


def _impl(text: str) -> str:
    from .bench import IMPLEMENTATIONS
    if text.lower() not in IMPLEMENTATIONS:
        raise ValueError(f"{text!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    return text.lower()


def _op(text: str) -> str:
    from .bench import OPS
    op = text.lower().replace("-", "_")
    if op not in OPS:
        raise ValueError(f"{text!r} is not one of {', '.join(OPS)}")
    return op


def _one_of(module: str, names: str) -> Callable[[str], str]:
    """A validator of one of the names ``recengine.<module>.<names>`` lists (imported when an
    argument is parsed, so that the command line starts without the study modules)."""

    def check(text: str) -> str:
        allowed = getattr(importlib.import_module(f"recengine.{module}"), names)
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return check


def _study_outputs(parser: argparse.ArgumentParser, plot_help: str) -> None:
    """A study's --json, --out and --plot options."""
    parser.add_argument("--json", action="store_true",
                        help="print only a JSON list of row objects to stdout")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="also write {rows, summary, config} as JSON")
    parser.add_argument("--plot", metavar="FILE.png", default=None, help=plot_help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recengine",
        description="recengine: Rust-accelerated embedding pooling for recommendation models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="time pooling for the DeepRecInfra models against torch and numpy",
        description=(
            "Time each model's embedding stage (all tables, fixed pooling, uniform random "
            "indices) with recengine, torch and numpy side by side on the same tables, "
            "indices and thread count, check that the outputs agree, and compare with a plain "
            "gather of the same rows (the probe). Tables are scaled to --table-mb per model "
            "unless --scale is given. The forward and forward_backward ops (fp32, need torch) "
            "time the stage as torch modules: recengine.nn.EmbeddingBagCollection on a "
            "KeyedJaggedTensor and the converted drop-in modules against torch's "
            "nn.EmbeddingBag per table, in eval or as a training step without the optimizer, "
            "checking outputs and weight gradients."),
    )
    bench.add_argument("--models", type=_comma_list(_model, "model"), default=None,
                       help="comma list of models (default: all eight: rmc1,rmc2,rmc3,wnd,"
                            "mtwnd,ncf,din,dien)")
    bench.add_argument("--batches", type=_comma_list(_positive_int, "batch"), default=None,
                       help="comma list of batch sizes (default: 1,16,64,256,1024)")
    bench.add_argument("--dtypes", type=_comma_list(_dtype, "dtype"), default=None,
                       help="comma list of table dtypes: fp32, int8 (default: both)")
    bench.add_argument("--impls", type=_comma_list(_impl, "implementation"), default=None,
                       help="comma list of implementations to time (default: "
                            "recengine,torch,numpy)")
    bench.add_argument("--ops", type=_comma_list(_op, "op"), default=None,
                       help="comma list of what to measure: pool (recengine's lookup vs "
                            "torch vs numpy), forward (eval forward as torch modules), "
                            "forward_backward (forward + backward, no optimizer step); the "
                            "last two on fp32 tables only (default: all three)")
    bench.add_argument("--grad", choices=("sparse", "dense"), default="sparse",
                       help="weight gradients of the forward_backward op (default: sparse, "
                            "as in DLRM training)")
    bench.add_argument("--scale", type=_arg_positive_float, default=None,
                       help="row-count factor applied to every model's tables (1 = the paper's "
                            "full size, e.g. 4M rows per RMC1 table); overrides --table-mb")
    bench.add_argument("--table-mb", type=_arg_positive_float, default=None,
                       help="scale each model's fp32 tables to about this many MiB, never above "
                            "full size (default: 256, well above a 32 MB L3)")
    bench.add_argument("--min-rows", type=_arg_positive_int, default=1024,
                       help="fewest rows a scaled table keeps (default: 1024)")
    bench.add_argument("--threads", type=_arg_positive_int, default=None,
                       help="threads for recengine and torch alike (default: all cores)")
    bench.add_argument("--repeats", type=_arg_positive_int, default=None,
                       help="most timed calls per implementation and case; the median is "
                            "reported (default: 20)")
    bench.add_argument("--budget", type=_arg_positive_float, default=None, metavar="SECONDS",
                       help="time budget per implementation and case; stops early after "
                            "it (default: 0.3)")
    bench.add_argument("--warmup", type=_int_in(0, 10**6), default=1,
                       help="untimed calls before the first round (default: 1)")
    bench.add_argument("--rounds", type=_arg_positive_int, default=None,
                       help="time the implementations in turn this many times, splitting "
                            "--repeats and --budget between rounds (default: 3)")
    bench.add_argument("--timing", choices=("alternate", "blocks"), default="alternate",
                       help="alternate: implementations take turns call by call, as one "
                            "process serving both runs them (default); blocks: each alone in "
                            "blocks of calls with the cache flushed between (--rounds)")
    bench.add_argument("--seed", type=_seed, default=0, help="seed of tables and indices")
    bench.add_argument("--no-probe", action="store_true",
                       help="skip the gather roofline (probe) measurement")
    bench.add_argument("--per-table", action="store_true",
                       help="also time every table alone (recengine vs torch); in the JSON as "
                            "tables_detail, and printed")
    bench.add_argument("--quick", action="store_true",
                       help="a tiny smoke run: rmc1 at 2 MiB, batches 1 and 16, 3 calls each "
                            "(explicit options still apply)")
    bench.add_argument("--json", action="store_true",
                       help="print only a JSON list of row objects to stdout (progress and "
                            "messages go to stderr)")
    bench.add_argument("--out", metavar="FILE", default=None,
                       help="also write the results as JSON: {rows, summary, config, machine}")
    bench.add_argument("--plot", metavar="FILE.png", default=None,
                       help="save a chart of the speed ratio vs torch per model and batch "
                            "(needs matplotlib)")
    bench.set_defaults(func=_cmd_bench)

    whole = sub.add_parser(
        "bench-models",
        help="time whole DeepRecInfra models on torch's embeddings against recengine's",
        description=(
            "Build each model on torch.nn.EmbeddingBag tables, as recengine.nn.convert-ed "
            "drop-in modules and on recengine's EmbeddingBagCollection, with the same weights, "
            "and time whole eval forwards and training steps (forward, backward, SGD step), the "
            "routes taking turns call by call in this process on the same thread count. "
            "Prints torch's time and each route's speedup over it."),
    )
    whole.add_argument("--models", type=_comma_list(_model, "model"), default=None,
                       help="comma-separated models (default: rmc1,rmc2,rmc3)")
    whole.add_argument("--batches", type=_comma_list(_positive_int, "batch"), default=None,
                       help="comma-separated batch sizes (default: 1,16,64,256,1024)")
    whole.add_argument("--steps", type=_comma_list(_one_of("modelbench", "STEPS"), "step"),
                       default=None, help="forward and/or train (default: both)")
    whole.add_argument("--routes", type=_comma_list(_one_of("modelbench", "ROUTES"), "route"),
                       default=None, help="recengine routes: convert, collection, compiled "
                                          "(torch.compile of the converted model, forwards "
                                          "only) (default: convert,collection)")
    whole.add_argument("--threads", type=_arg_positive_int, default=None,
                       help="threads for torch and recengine alike (default: all cores)")
    whole.add_argument("--scale", type=_arg_positive_float, default=0.05,
                       help="table row factor (default: 0.05; 1 is the paper's size)")
    whole.add_argument("--repeats", type=_arg_positive_int, default=25,
                       help="timed calls per route and case (default: 25)")
    whole.add_argument("--warmup", type=_int_in(0, 10**6), default=3,
                       help="untimed calls first (default: 3)")
    whole.add_argument("--budget", type=_arg_positive_float, default=2.0, metavar="SECONDS",
                       help="seconds of timed calls per route and case (default: 2)")
    whole.add_argument("--seed", type=_seed, default=0, help="seed of weights and batches")
    _study_outputs(whole, "write a chart of each route's speedup over torch by batch")
    whole.set_defaults(func=_cmd_bench_models)

    shard = sub.add_parser(
        "shard",
        help="serve a model's tables sharded by each planner, in process and on Ray",
        description=(
            "Serve one DeepRecInfra model's embedding tables singular (one shard) and sharded "
            "by each planning strategy, in this process and on Ray (one actor per shard), "
            "from the same queries, and report p50/p99 latency per query, the p99 and compute "
            "overheads over singular in-process serving, the lookups each shard call carries "
            "and the bytes each shard holds."),
    )
    shard.add_argument("--model", type=_model, default="rmc1",
                       help="the model (default: rmc1)")
    shard.add_argument("--shards", type=_int_in(1, 1024), default=4,
                       help="shards for the sharded strategies (default: 4)")
    shard.add_argument("--strategies", default=None,
                       type=_comma_list(_one_of("shard", "STRATEGIES"), "strategy"),
                       help="comma list of planners (default: all: singular,capacity,load,"
                            "net,cost; singular is always run, as the baseline)")
    shard.add_argument("--backends", default=None,
                       type=_comma_list(_one_of("shard.study", "BACKENDS"), "backend"),
                       help="comma list of inprocess, ray (default: both, or inprocess alone "
                            "where Ray is not installed)")
    shard.add_argument("--queries", type=_arg_positive_int, default=300,
                       help="timed queries per strategy and backend (default: 300)")
    shard.add_argument("--batch", type=_arg_positive_int, default=16,
                       help="samples per query (default: 16)")
    shard.add_argument("--table-mb", type=_arg_positive_float, default=128.0,
                       help="scale the model's fp32 tables to about this many MiB (default: "
                            "128)")
    shard.add_argument("--memory-mb", type=_arg_positive_float, default=None,
                       help="per-shard memory cap for the planners (default: none)")
    shard.add_argument("--seed", type=_seed, default=0, help="seed of tables and queries")
    shard.add_argument("--ray-address", default=None,
                       help="an existing Ray cluster's address (default: start a local one)")
    shard.add_argument("--ray-cpus", type=_arg_positive_int, default=None,
                       help="CPUs of the local Ray instance (default: all)")
    shard.add_argument("--plans", action="store_true", help="also print each strategy's plan")
    _study_outputs(shard, "save a chart of latency and compute overhead per strategy")
    shard.set_defaults(func=_cmd_shard)

    moe = sub.add_parser(
        "moe",
        help="Expert Buffering: cache policies and sizes, dynamic vs static gating, placement",
        description=(
            "Replay an MoE routing trace (synthetic Zipf with temporal locality, or recorded "
            "from the layer's gate) through expert caches of each policy and size, next to "
            "Belady's MIN; time the buffered layer against all experts resident; compare "
            "dynamic with static (capacity) gating; and place experts on devices for load "
            "balance."),
    )
    moe.add_argument("--experts", type=_int_in(1, 65536), default=64,
                     help="experts in the layer (default: 64)")
    moe.add_argument("--d-model", type=_arg_positive_int, default=256,
                     help="token width (default: 256)")
    moe.add_argument("--d-hidden", type=_arg_positive_int, default=1024,
                     help="expert hidden width (default: 1024; 2 MiB per expert)")
    moe.add_argument("--top-k", type=_arg_positive_int, default=2, help="experts per token")
    moe.add_argument("--batches", type=_arg_positive_int, default=300,
                     help="batches in the trace (default: 300)")
    moe.add_argument("--tokens", type=_int_in(1, 1 << 20), default=8,
                     help="tokens per batch of the trace (default: 8, decode-sized)")
    moe.add_argument("--trace", choices=("synthetic", "recorded"), default="synthetic",
                     help="where the routing comes from (default: synthetic)")
    moe.add_argument("--zipf", type=_float_in(0, 1e6), default=1.0,
                     help="synthetic trace's Zipf exponent (default: 1.0)")
    moe.add_argument("--locality", type=_float_in(0, 1), default=0.5,
                     help="synthetic trace's temporal locality in [0, 1] (default: 0.5)")
    moe.add_argument("--slots", type=_comma_list(_positive_int, "slot count"), default=None,
                     help="comma list of cache sizes in experts (default: 8,16,24,32,48)")
    moe.add_argument("--policies", default=None,
                     type=_comma_list(_one_of("cache", "POLICIES"), "policy"),
                     help="comma list of policies (default: inactive_lifo,lru,fifo,lfu,"
                          "belady)")
    moe.add_argument("--timed-batches", type=_arg_positive_int, default=50,
                     help="batches the throughput is timed on (default: 50)")
    moe.add_argument("--gating-tokens", type=_int_in(1, 1 << 20), default=2048,
                     help="tokens of the dynamic vs static gating batch (default: 2048)")
    moe.add_argument("--devices", type=_arg_positive_int, default=8,
                     help="devices to place experts on (default: 8)")
    moe.add_argument("--seed", type=_seed, default=0, help="seed of the layer and trace")
    _study_outputs(moe, "save miss rate and throughput ratio against slots per policy")
    moe.set_defaults(func=_cmd_moe)

    nmp = sub.add_parser(
        "nmp",
        help="emulate SLS on a DDR4 host vs on RecNMP near-memory units",
        description=(
            "Emulate one model's SparseLengthsSum lookups on the DDR4 host and on RecNMP "
            "(rank-level NMP units, RankCache, hot-entry profiling, table-aware scheduling), "
            "sweeping ranks, cache size, locality, co-location, scheduling and profiling, and "
            "report memory-latency speedup, end-to-end throughput speedup and energy saving."),
    )
    nmp.add_argument("--model", type=_model, default="rmc1", help="the model (default: rmc1)")
    nmp.add_argument("--batch", type=_arg_positive_int, default=64,
                     help="samples per batch (default: 64)")
    nmp.add_argument("--table-mb", type=_arg_positive_float, default=256.0,
                     help="scale the model's tables to about this many MiB (default: 256)")
    nmp.add_argument("--zipf", type=_float_in(0, 1e6), default=1.0,
                     help="locality: Zipf exponent over each table's rows, or the Pareto shape "
                          "(default: 1.0)")
    nmp.add_argument("--distribution", default="zipf",
                     choices=("uniform", "zipf", "pareto", "production"),
                     help="row distribution of the model's traces (default: zipf)")
    nmp.add_argument("--trace", default=None, metavar="FILE",
                     help="emulate this trace (.npz from Trace.save, or CSV/text with columns "
                          "table,row[,bag][,model]) instead of the model's batch")
    nmp.add_argument("--sls-fraction", type=_float_in(0, 1), default=0.79,
                     help="share of inference time in SLS on the host, for the throughput "
                          "speedup (default: 0.79)")
    nmp.add_argument("--sweeps", default=None,
                     type=_comma_list(_one_of("nmp.study", "SWEEPS"), "sweep"),
                     help="comma list of ranks, cache, locality, colocation, scheduling, "
                          "profiling (default: all)")
    nmp.add_argument("--preset", choices=("recnmp",), default=None,
                     help="run only the paper's configuration")
    nmp.add_argument("--seed", type=_seed, default=0, help="seed of the traces")
    _study_outputs(nmp, "save latency speedup and energy saving per sweep")
    nmp.set_defaults(func=_cmd_nmp)

    serve = sub.add_parser(
        "serve",
        help="serve a model under a query stream: DeepRecSched vs a static baseline",
        description=(
            "Serve one of the DeepRecInfra models under Poisson queries of lognormal sizes and "
            "find the latency-bounded throughput (the highest QPS whose p95 meets the model's "
            "target) of a static baseline and of DeepRecSched (tuned batch size and accelerator "
            "offload threshold): on the real server on this machine's cores, or with --simulate "
            "in a discrete-event simulator fed by this machine's profiled latency curve at any "
            "core count."),
    )
    serve.add_argument("--model", default=["rmc1"],
                       type=_comma_list(_model_or_all, "model"),
                       help="model, comma list, or 'all' (default: rmc1)")
    serve.add_argument("--simulate", action="store_true",
                       help="run the simulator instead of the real server")
    serve.add_argument("--processes", action="store_true",
                       help="one process per worker, each with its own copy of the model, "
                            "instead of threads sharing one interpreter lock (scales past a "
                            "few cores; a few seconds to start)")
    serve.add_argument("--profile-workers", type=_arg_positive_int, default=1,
                       help="with --simulate: profile the latency curve with this many "
                            "workers busy at once, so it carries their contention for memory "
                            "bandwidth, caches and clock (default: 1, none)")
    serve.add_argument("--profile-loads", type=_comma_list(_positive_float, "load"),
                       default=[0.9],
                       help="with --simulate: profile the latency curve at these fractions of "
                            "the workers' capacity (comma list, increasing, default: 0.9); "
                            "with several, each simulated run takes the curve of the load it "
                            "puts on the cores, interpolated between them (workers that slow "
                            "each other down the busier they are, e.g. 0.3,0.6,0.9)")
    serve.add_argument("--service-times", choices=("median", "profiled"), default="median",
                       help="with --simulate: give every sub-request the profiled median time "
                            "for its size ('median', the default) or draw it from the spread "
                            "the profile saw ('profiled': the tail that sets a tight target's "
                            "p95, and any slow stretch of the profile with it)")
    serve.add_argument("--search", choices=("bisect", "controller"), default="bisect",
                       help="how each policy's latency-bounded QPS is found: bracket and "
                            "bisect the rate over runs at fixed rates ('bisect', the "
                            "default), or DeepRecSys's controller, which steps the rate of one "
                            "long "
                            "run on the p95 of every 64 completed queries ('controller')")
    serve.add_argument("--confirm", type=_int_in(0, 100), default=1,
                       help="real server: run a rate that misses the target this many more "
                            "times before the search counts it as a miss, so that one slow "
                            "stretch does not end a search low (default: 1)")
    serve.add_argument("--cores", type=_comma_list(_core_count, "core count"), default=None,
                       help="cores (comma list with --simulate; default: this machine's)")
    serve.add_argument("--scale", type=_arg_positive_float, default=0.05,
                       help="table row factor (default: 0.05, all eight models under 2 GB)")
    serve.add_argument("--target-ms", type=_arg_positive_float, default=None,
                       help="p95 target in ms (default: the model's DeepRecInfra target)")
    serve.add_argument("--target-scale", type=_arg_positive_float, default=1.0,
                       help="multiply every model's DeepRecInfra target (DeepRecSys sweeps low, "
                            "medium "
                            "and high targets; default: 1)")
    serve.add_argument("--static-batch", type=_arg_positive_int, default=None,
                       help="the static baseline's batch size: every query split into "
                            "sub-requests of this many items (default: 32, DeepRecInfra's "
                            "fixed per-core batch; 1024 runs every query whole). The gain "
                            "over whole queries is printed too")
    serve.add_argument("--batch-sizes", type=_comma_list(_positive_int, "batch size"),
                       default=None,
                       help="DeepRecSched's batch sizes in the order tried (default: "
                            "1024,512,384,256,192,128,96,64,48,32)")
    serve.add_argument("--patience", type=_int_in(0, 1000), default=None,
                       help="stop DeepRecSched's climb after this many non-improving tries "
                            "past a drop (DeepRecSys stops at the first drop: 0; default: try all)")
    serve.add_argument("--accelerator", choices=("none", "cuda", "modeled"), default="none",
                       help="offload target: a CUDA device (real server) or a latency model "
                            "(--accelerator-curves) (default: none)")
    serve.add_argument("--accelerator-curves", metavar="FILE", default=None,
                       help="JSON {model: {batches, ms}} of the modeled accelerator")
    serve.add_argument("--sizes", metavar="SPEC", default=None,
                       help="query sizes: lognormal:MU,SIGMA, normal:MEAN,SD, fixed:N or a "
                            "percentile file (default: lognormal:5.1,0.2)")
    serve.add_argument("--size-percentiles", metavar="FILE", default=None,
                       help="query sizes from this percentile file (the same as --sizes FILE)")
    serve.add_argument("--arrivals", choices=("poisson", "poisson-ms", "diurnal"),
                       default="poisson",
                       help="arrival process: exponential gaps, whole-millisecond gaps, or a "
                            "diurnal rate curve (default: poisson)")
    serve.add_argument("--distribution", default="uniform",
                       choices=("uniform", "zipf", "pareto", "production", "movielens"),
                       help="rows the model's inputs read; movielens needs the recbole wheel "
                            "(default: uniform)")
    serve.add_argument("--queries", type=_int_in(0, 10**7), default=0,
                       help="queries per run at least (default: 2000 simulated, 300 real)")
    serve.add_argument("--seed", type=_seed, default=0, help="seed of weights and workload")
    _study_outputs(serve, "save latency-bounded QPS against batch size per model")
    serve.set_defaults(func=_cmd_serve)

    info = sub.add_parser("info", help="show how this build of recengine was made")
    info.add_argument("--json", action="store_true", help="print the build info as JSON")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``recengine`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"recengine {args.command}: error: {exc}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------------------------
# output helpers


def _rich() -> Any:
    """The rich package, or None."""
    try:
        import rich
        import rich.console
        import rich.progress
        import rich.table
    except ImportError:
        return None
    return rich


def _fmt_rate(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 1e6:,.1f}"


def _fmt_ratio(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _fmt_pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _fmt_num(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _fmt_bool(v: Optional[bool]) -> str:
    return "-" if v is None else ("yes" if v else "NO")


#: Columns shown left-aligned (the names); the rest are right-aligned.
_LEFT_COLUMNS = ("model", "dtype", "op")

_COLUMNS = [  # header, row key, formatter
    ("model", "model", str),
    ("batch", "batch", str),
    ("dtype", "dtype", str),
    ("op", "op", str),
    ("lookups", "lookups", lambda v: f"{v:,}"),
    ("recengine", "recengine_lookups_per_s", _fmt_rate),
    ("torch", "torch_lookups_per_s", _fmt_rate),
    ("numpy", "numpy_lookups_per_s", _fmt_rate),
    ("vs torch", "ratio_vs_torch", _fmt_ratio),
    ("vs numpy", "ratio_vs_numpy", _fmt_ratio),
    ("modules vs torch", "ratio_modules_vs_torch", _fmt_ratio),
    ("GB/s", "recengine_gb_per_s", _fmt_num),
    ("of probe", "probe_fraction", _fmt_pct),
    ("ok", "correct", _fmt_bool),
]


def _summary_lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    def spread(s: dict[str, Any], fmt: Callable[[Optional[float]], str]) -> str:
        if not s or not s.get("n"):
            return "-"
        return (f"geomean {fmt(s['geomean'])}, min {fmt(s['min'])} ({s['min_at']}), "
                f"max {fmt(s['max'])}, n={s['n']}")

    per_op = summary.get("per_op") or {}
    lines = []
    if "pool" in per_op or not per_op:
        lines += [
            ("pool fp32 vs torch, batch >= 64", spread(summary["ratio_vs_torch_large_batch"],
                                                        _fmt_ratio)),
            ("pool fp32 vs torch, batch <= 16", spread(summary["ratio_vs_torch_small_batch"],
                                                        _fmt_ratio)),
            ("pool int8 vs torch (int8 op)", spread(summary["ratio_vs_torch_int8"],
                                                     _fmt_ratio)),
            ("pool recengine int8 / fp32 lookups/s", spread(summary["int8_over_fp32"],
                                                             _fmt_ratio)),
        ]
        for dtype, s in summary["probe_fraction_batch_1024"].items():
            lines.append((f"pool {dtype} fraction of probe, batch 1024", spread(s, _fmt_pct)))
    groups = (("large_batch", "batch >= 64"), ("small_batch", "batch <= 16"),
              ("all", "all batches"))
    for op, o in per_op.items():
        if op == "pool":
            continue
        targets = {t["group"]: t for t in o["targets"]}
        for group, label in groups:
            name, value = f"{op} vs torch, {label}", spread(o[group], _fmt_ratio)
            t = targets.get(group)
            if t is not None:
                name += f" (target >= {t['target']:g}x)"
                if t["met"] is not None:
                    value += ": target met" if t["met"] else ": target NOT met"
            lines.append((name, value))
        lines.append((f"{op} drop-in modules vs torch", spread(o["modules_vs_torch"],
                                                               _fmt_ratio)))
    slow = summary["slower_than_torch"]
    lines.append(("slower than torch", "none" if not slow else "; ".join(
        f"{_case(s)} {s['ratio_vs_torch']:.2f}x" for s in slow)))
    ok = summary["all_correct"]
    lines.append(("outputs agree", "-" if ok is None else (
        "yes, every case" if ok else "NO: " + ", ".join(summary["incorrect"]))))
    return lines


def _case(row: dict[str, Any]) -> str:
    from .bench import case_name
    return case_name(row)


def _display_order(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by model, dtype and op (in the order they first appear, ops in
    ``bench.OPS`` order), batches in measurement order within a group."""
    from .bench import OPS

    models = list(dict.fromkeys(r["model"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        op = r.get("op", "pool")
        return (models.index(r["model"]), dtypes.index(r["dtype"]),
                OPS.index(op) if op in OPS else len(OPS))

    return sorted(rows, key=key)


def _print_plain(rows: Sequence[dict[str, Any]], summary: dict[str, Any], out: Any) -> None:
    cells = [[h for h, _, _ in _COLUMNS]]
    cells += [["-" if r.get(k) is None else fmt(r[k]) for _, k, fmt in _COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)), file=out)
    print(file=out)
    for name, value in _summary_lines(summary):
        print(f"{name}: {value}", file=out)


def _print_rich(rich: Any, console: Any, rows: Sequence[dict[str, Any]],
                summary: dict[str, Any], title: str) -> None:
    table = rich.table.Table(title=title, title_justify="left")
    for header, key, _ in _COLUMNS:
        # The op names are kept whole ("forward_backward"): other columns wrap instead.
        table.add_column(header, justify="left" if key in _LEFT_COLUMNS else "right",
                         min_width=len("forward_backward") if key == "op" else None)
    previous = None
    for r in rows:
        group = (r["model"], r["dtype"], r.get("op", "pool"))
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        cells = []
        for _, key, fmt in _COLUMNS:
            v = r.get(key)
            text = fmt(v) if v is not None else "-"
            if key in ("ratio_vs_torch", "ratio_modules_vs_torch") and v is not None:
                text = f"[{'green' if v >= 1 else 'bold red'}]{text}[/]"
            if key == "correct" and v is False:
                text = f"[bold red]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    console.print(table)
    st = rich.table.Table(title="targets", title_justify="left", show_header=False)
    st.add_column("metric", style="bold")
    st.add_column("value")
    for name, value in _summary_lines(summary):
        st.add_row(name, value)
    console.print(st)


def _wide_console(rich: Any) -> Any:
    """A stdout console; when stdout is not a terminal, wide enough for the results table."""
    console = rich.console.Console()
    if not console.is_terminal:
        console = rich.console.Console(width=max(console.width, 150))
    return console


def _print_per_table(rows: Sequence[dict[str, Any]], write: Callable[[str], None]) -> None:
    """One line per (row, table shape): tables of the same shape are shown together."""
    from .bench import _geomean

    for r in rows:
        groups: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
        for d in r.get("tables_detail") or ():
            groups.setdefault((d["num_rows"], d["dim"], d["lookups"]), []).append(d)
        for (num_rows, dim, lookups), ds in groups.items():
            rec = _geomean([d["recengine_lookups_per_s"] for d in ds])
            tor = _geomean([d["torch_lookups_per_s"] for d in ds if d["torch_lookups_per_s"]])
            ratio = _geomean([d["ratio_vs_torch"] for d in ds if d["ratio_vs_torch"]])
            write(f"  {r['model']}/{r['dtype']}/b{r['batch']} table alone: {len(ds)} x "
                  f"{num_rows:,} rows x {dim}, {lookups:,} lookups: recengine {_fmt_rate(rec)}"
                  f", torch {_fmt_rate(tor)} M lookups/s, {_fmt_ratio(ratio)}")


def _plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .bench import OPS

    # One panel per (op, dtype) measured: pool fp32, pool int8, forward fp32, ...
    panels = [(op, d) for op in OPS for d in ("fp32", "int8")
              if any(r.get("op", "pool") == op and r["dtype"] == d for r in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.3 * len(models) + 2),
                                                      3.6 * len(panels)), squeeze=False)
    width = 0.8 / max(len(batches), 1)
    for ax, (op, dtype) in zip(axes[:, 0], panels):
        lookup = {(r["model"], r["batch"]): r["ratio_vs_torch"] for r in rows
                  if r["dtype"] == dtype and r.get("op", "pool") == op}
        for j, batch in enumerate(batches):
            xs = [i + (j - (len(batches) - 1) / 2) * width for i in range(len(models))]
            ys = [lookup.get((m, batch)) or 0.0 for m in models]
            ax.bar(xs, ys, width, label=f"batch {batch}")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_ylabel("recengine speed / torch speed")
        ax.set_title(f"{op}, {dtype}: speedup over torch (> 1: recengine faster)",
                     fontsize="medium")
        if any(v for v in lookup.values()):
            ax.set_yscale("log")
        ax.legend(fontsize="small", ncol=min(len(batches), 5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _jsonable(obj: Any) -> Any:
    """Make floats JSON-safe (inf/nan become None)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# commands


def _cmd_bench(args: argparse.Namespace) -> int:
    import recengine

    from . import bench

    quick = _QUICK if args.quick else {}
    config = bench.BenchConfig(
        models=args.models or quick.get("models") or bench.model_names(),
        batches=args.batches or quick.get("batches") or bench.DEFAULT_BATCHES,
        dtypes=args.dtypes or bench.DEFAULT_DTYPES,
        scale=args.scale,
        table_mb=args.table_mb or quick.get("table_mb") or bench.DEFAULT_TABLE_MB,
        min_rows=args.min_rows,
        threads=args.threads,
        repeats=args.repeats or quick.get("repeats") or bench.BenchConfig.repeats,
        budget_s=args.budget or quick.get("budget") or bench.BenchConfig.budget_s,
        warmup=args.warmup,
        rounds=args.rounds or quick.get("rounds") or bench.BenchConfig.rounds,
        seed=args.seed,
        impls=args.impls or bench.IMPLEMENTATIONS,
        ops=args.ops or bench.OPS,
        grad=args.grad,
        probe=not args.no_probe,
        per_table=args.per_table,
        evict_mb=quick.get("evict_mb", 64.0),
        fresh_mb=quick.get("fresh_mb", 64.0),
        timing=args.timing,
    )
    rich = _rich()
    err_console = rich.console.Console(stderr=True) if rich else None
    out_console = _wide_console(rich) if rich and not args.json else None

    def note(msg: str, style: Optional[str] = None) -> None:
        if err_console is not None:
            err_console.print(msg, style=style, markup=False, highlight=False)
        else:
            print(msg, file=sys.stderr)

    if args.plot and not _matplotlib_available():
        note(f"--plot {args.plot}: matplotlib is not installed (pip install matplotlib); the "
             "benchmark runs without the chart.", style="yellow")

    threads = config.threads or bench.default_threads()
    busy_start = _cpus_busy()
    if busy_start is not None and busy_start > 0.2:
        note(f"warning: other processes keep {busy_start:.1f} of {os.cpu_count()} CPUs busy: "
             "timings will be noisy (torch's OpenMP threads above all)", style="yellow")
    info = recengine.build_info()
    header = (f"recengine {info.get('version', recengine.__version__)} "
              f"({info.get('profile', '?')}, simd {info.get('simd', '?')}), {threads} threads, "
              f"{len(config.models)} models x {len(config.dtypes)} dtypes x "
              f"{len(config.batches)} batches, ops {','.join(config.ops)}"
              + (f" (grad {config.grad})" if "forward_backward" in config.ops else ""))
    if not args.json:
        note(header)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        total = bench.planned_rows(config)  # may warn that torch is missing
        if rich is not None:
            progress = _progress(rich, err_console)
            with progress:
                task = progress.add_task("starting", total=total)
                for row in bench.iter_bench(
                        config, status=lambda m: progress.update(task, description=m)):
                    rows.append(row)
                    progress.advance(task)
        else:
            for row in bench.iter_bench(config, status=lambda m: print(m, file=sys.stderr)):
                rows.append(row)
                print(f"  [{len(rows)}/{total}] {row['model']} {row['dtype']} "
                      f"b{row['batch']} {row['op']}: ratio vs torch "
                      f"{_fmt_ratio(row['ratio_vs_torch'])}", file=sys.stderr)
    for w in caught:
        note(f"warning: {w.message}", style="yellow")
    wall = time.perf_counter() - start
    summary = bench.summarize(rows)
    rows = _jsonable(rows)

    if args.json:
        print(json.dumps(rows, indent=1))
    elif rich is not None:
        _print_rich(rich, out_console, _display_order(rows), summary,
                    title=f"embedding stage: million lookups/s (median per call), "
                          f"{threads} threads")
        _print_per_table(rows, lambda s: out_console.print(s, highlight=False))
    else:
        _print_plain(_display_order(rows), summary, sys.stdout)
        _print_per_table(rows, print)
    note(f"numpy column: {bench.NUMPY_METHOD}")
    note(f"wall time {wall:.1f} s")

    if args.out:
        doc = {
            "rows": rows,
            "summary": _jsonable(summary),
            "config": bench.config_dict(config),
            "machine": {
                "build_info": dict(info),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "threads": threads,
                "cpus_busy_start": busy_start,
                "cpus_busy_end": _cpus_busy(),
                "loadavg_end": _loadavg(),
                "numpy": _version("numpy"),
                "torch": _version("torch"),
            },
            "numpy_method": bench.NUMPY_METHOD,
            "wall_s": wall,
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(_jsonable(doc), f, indent=1, default=str)
        note(f"wrote {args.out}")
    if args.plot and _matplotlib_available():
        _plot(rows, args.plot)
        note(f"wrote {args.plot}")
    return 0


def _progress(rich: Any, console: Any) -> Any:
    """A transient progress bar on ``console`` (stderr)."""
    return rich.progress.Progress(
        rich.progress.SpinnerColumn(), rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(), rich.progress.MofNCompleteColumn(),
        rich.progress.TimeElapsedColumn(), console=console, transient=True)


def _write_study(args: argparse.Namespace, rows: list[dict[str, Any]], summary: Any,
                 config: dict[str, Any], wall: float, plot: Callable[[Any, str], None],
                 note: Callable[[str], None]) -> None:
    """A study's ``--out`` JSON and ``--plot`` chart."""
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(_jsonable({"rows": rows, "summary": summary, "config": config,
                                 "wall_s": wall}), f, indent=1)
        note(f"wrote {args.out}")
    if args.plot and _matplotlib_available():
        plot(rows, args.plot)
        note(f"wrote {args.plot}")


def _run_study(iter_study: Callable[..., Any], config: Any, total: Optional[int],
               advance: str = "status") -> tuple[list[dict[str, Any]], float]:
    """A study's rows and wall seconds, with a progress bar on stderr (plain status lines
    without rich). The bar advances once per status line (``advance="status"``) or once per
    ``tick`` the study calls (``"tick"``) up to ``total``."""
    rich = _rich()
    start = time.perf_counter()
    if rich is None:
        rows = list(iter_study(config, status=lambda m: print(m, file=sys.stderr)))
    else:
        progress = _progress(rich, rich.console.Console(stderr=True))
        with progress:
            task = progress.add_task("starting", total=total)
            step = 1 if advance == "status" else 0
            hooks: dict[str, Any] = {
                "status": lambda m: progress.update(task, description=m, advance=step)}
            if advance == "tick":
                hooks["tick"] = lambda: progress.advance(task)
            rows = list(iter_study(config, **hooks))
    return _jsonable(rows), time.perf_counter() - start


def _cmd_bench_models(args: argparse.Namespace) -> int:
    from . import modelbench

    config = modelbench.ModelBenchConfig(
        models=args.models or modelbench.DEFAULT_MODELS,
        batches=args.batches or modelbench.DEFAULT_BATCHES,
        steps=args.steps or modelbench.STEPS, routes=args.routes or modelbench.DEFAULT_ROUTES,
        threads=args.threads, scale=args.scale, repeats=args.repeats, warmup=args.warmup,
        budget_s=args.budget, seed=args.seed)
    total = len(config.models) * len(config.steps) * len(config.batches)
    rows, wall = _run_study(modelbench.iter_model_bench, config, total + len(config.models))
    summary = modelbench.summarize_models(rows)
    if args.json:
        print(json.dumps({"rows": rows, "summary": _jsonable(summary)}, indent=1))
    else:
        _print_model_bench(rows, summary)
        print(f"wall time {wall:.1f} s", file=sys.stderr)
    _write_study(args, rows, _jsonable(summary), modelbench.config_dict(config), wall,
                 _plot_model_bench, lambda m: print(m, file=sys.stderr))
    return 0


def _print_model_bench(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    """One line per (model, step, batch): torch's time and each route's speedup."""
    routes = list(dict.fromkeys(r["route"] for r in rows))
    threads = rows[0]["threads"] if rows else "?"
    pool = rows[0]["pool"] if rows else "?"
    print(f"whole models, {threads} threads for torch and recengine (recengine on the "
          f"{pool} pool); speedup = torch time / route time, median per call, alternating")
    print(f"{'model':<7}{'step':<9}{'batch':>6}{'torch':>11}" + "".join(f"{r:>12}" for r in routes))
    cases = dict.fromkeys((r["model"], r["step"], r["batch"]) for r in rows)
    for model, step, batch in cases:
        got = {r["route"]: r for r in rows
               if (r["model"], r["step"], r["batch"]) == (model, step, batch)}
        first = next(iter(got.values()))
        cells = "".join(
            f"{_fmt_ratio(got[r]['speedup']) + ('' if got[r]['correct'] else '!'):>12}"
            if r in got else f"{'':>12}" for r in routes)
        print(f"{model:<7}{step:<9}{batch:>6}{first['torch_ms']:>9.3f}ms{cells}")
    for key, s in summary.items():
        if key == "all_correct":
            continue
        print(f"{key}: geomean {_fmt_ratio(s['geomean_b16_up'])} at batch >= 16 "
              f"(target {s['target']:.1f}x), slowest {_fmt_ratio(s['min'])} ({s['slowest']})")
    if not summary.get("all_correct", True):
        print("! a route's forward output differs from torch's (see max_diff in --json)")


def _plot_model_bench(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Speedup over torch by batch: one panel per step, one line per model and route."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(dict.fromkeys(r["step"] for r in rows))
    fig, axes = plt.subplots(1, len(steps), figsize=(6 * len(steps), 4.2), squeeze=False)
    for ax, step in zip(axes[0], steps):
        for key in dict.fromkeys((r["model"], r["route"]) for r in rows if r["step"] == step):
            pts = sorted((r["batch"], r["speedup"]) for r in rows
                         if r["step"] == step and (r["model"], r["route"]) == key)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=" ".join(key))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch"] for r in rows})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch")
        ax.set_ylabel("speedup over torch (x)")
        threads = rows[0]["threads"] if rows else "?"
        ax.set_title(f"{step}, {threads} threads")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd_shard(args: argparse.Namespace) -> int:
    import importlib.util

    from .shard import STRATEGIES
    from .shard import study as st

    rich = _rich()
    err_console = rich.console.Console(stderr=True) if rich else None

    def note(msg: str, style: Optional[str] = None) -> None:
        if err_console is not None:
            err_console.print(msg, style=style, markup=False, highlight=False)
        else:
            print(msg, file=sys.stderr)

    backends = args.backends
    if backends is None:
        backends = ["inprocess", "ray"] if importlib.util.find_spec("ray") else ["inprocess"]
        if "ray" not in backends:
            note('Ray is not installed (pip install "recengine[shard]"): in-process only',
                 style="yellow")
    config = st.StudyConfig(model=args.model, shards=args.shards,
                            strategies=args.strategies or STRATEGIES, backends=backends,
                            queries=args.queries, batch=args.batch, table_mb=args.table_mb,
                            memory_mb=args.memory_mb, seed=args.seed,
                            ray_address=args.ray_address, ray_cpus=args.ray_cpus)
    if args.plot and not _matplotlib_available():
        note(f"--plot {args.plot}: matplotlib is not installed; no chart.", style="yellow")
    runs = len(config.backends) * len({"singular", *config.strategies})
    rows, wall = _run_study(st.iter_study, config, runs * config.queries, advance="tick")
    summary = st.summarize_study(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        head = ["strategy", "backend", "shards", "p50 ms", "p99 ms", "p99 overhead",
                "compute overhead", "calls/query", "lookups/call", "max shard MiB",
                "predicted ms", "splits"]
        body = [[r["strategy"], r["backend"], str(r["shards"]), f"{r['p50_ms']:.3f}",
                 f"{r['p99_ms']:.3f}", f"{r['p99_overhead']:.3f}x",
                 f"{r['compute_overhead']:.2f}x", f"{r['shard_calls_per_query']:.1f}",
                 f"{r['lookups_per_shard_call']:,.0f}", f"{r['max_shard_mb']:.1f}",
                 f"{r['predicted_ms']:.3f}", ",".join(r["splits"])] for r in rows]
        title = (f"{config.model}: {config.queries} queries of batch {config.batch}, "
                 f"{config.shards} shards")
        if rich is not None:
            table = rich.table.Table(title=title)
            for h in head:
                table.add_column(h, justify="left" if h in ("strategy", "backend", "splits")
                                 else "right")
            for line in body:
                table.add_row(*line)
            _wide_console(rich).print(table)
        else:
            print(title)
            print(" | ".join(head))
            for line in body:
                print(" | ".join(line))
        for backend, best in summary.items():
            print(f"best {backend}: {best['best']}, p99 {best['p99_overhead']:.3f}x singular "
                  f"in process, compute {best['compute_overhead']:.2f}x")
    if args.plans and not args.json:
        for p in st.study_plans(config).values():
            print(p.describe(config.batch))
    note(f"wall time {wall:.1f} s")
    _write_study(args, rows, summary, st.config_dict(config), wall, st.plot_study, note)
    return 0


def _cmd_nmp(args: argparse.Namespace) -> int:
    from .nmp import study as st

    config = st.NMPStudyConfig(model=args.model, batch=args.batch, table_mb=args.table_mb,
                               zipf=args.zipf, sls_fraction=args.sls_fraction,
                               distribution=args.distribution, trace=args.trace,
                               sweeps=args.sweeps or st.SWEEPS,
                               preset_only=args.preset == "recnmp", seed=args.seed)
    rows, wall = _run_study(st.iter_study, config, None)
    best = max(rows, key=lambda r: r["latency_speedup"]) if rows else None
    summary = {"best": best and best["config"],
               "best_latency_speedup": best and best["latency_speedup"]}
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        source = config.trace or f"{config.model}, {config.distribution} rows ({config.zipf})"
        print(f"{source}: {rows[0]['lookups'] if rows else 0} lookups a batch, SLS "
              f"{config.sls_fraction:.0%} of host time")
        print(f"{'config':<34}{'host us':>10}{'NMP us':>10}{'latency x':>11}{'throughput x':>14}"
              f"{'energy saved':>14}{'cache hits':>12}")
        for r in rows:
            print(f"{r['config']:<34}{r['host_latency_us']:>10.1f}{r['nmp_latency_us']:>10.1f}"
                  f"{r['latency_speedup']:>11.2f}{r['throughput_speedup']:>14.2f}"
                  f"{r['energy_saving']:>14.1%}{r['cache_hit_rate']:>12.1%}")
    print(f"wall time {wall:.1f} s", file=sys.stderr)
    _write_study(args, rows, summary, st.config_dict(config), wall, st.plot_study,
                 lambda m: print(m, file=sys.stderr))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .shapes import model_names
    from .workload import QuerySizes

    try:
        from .serving import study as st
    except ImportError as e:
        raise ValueError(f'recengine serve needs torch (pip install "recengine[torch]"): '
                         f'{e}') from None
    models: list[str] = []
    for m in args.model:
        models += model_names() if m == "all" else [m]
    if args.sizes and args.size_percentiles:
        raise ValueError("give --sizes or --size-percentiles, not both")
    sizes = (QuerySizes.parse(args.sizes) if args.sizes else
             QuerySizes.from_percentiles(args.size_percentiles) if args.size_percentiles
             else QuerySizes.lognormal())
    config = st.ServeConfig(models=models, simulate=args.simulate, cores=args.cores or (),
                            processes=args.processes, profile_workers=args.profile_workers,
                            profile_loads=args.profile_loads,
                            confirm=args.confirm, service_times=args.service_times,
                            search=args.search, scale=args.scale, target_ms=args.target_ms,
                            target_scale=args.target_scale,
                            static_batch=args.static_batch or st.STATIC.batch_size,
                            patience=args.patience,
                            batch_sizes=args.batch_sizes or st.BATCH_SIZES,
                            accelerator=args.accelerator,
                            accelerator_curves=args.accelerator_curves, sizes=sizes,
                            process=args.arrivals, distribution=args.distribution,
                            queries=args.queries, seed=args.seed)
    tries = len(config.batch_sizes) + 1 + (len(st.THRESHOLDS) + 1 if args.accelerator != "none"
                                       else 0)
    rows, wall = _run_study(st.iter_study, config, len(models) * len(config.cores) * tries,
                            advance="tick")
    ratios = [r["improvement"] for r in rows if r["improvement"]]
    over_whole = [r["gain_over_whole"] for r in rows if r["gain_over_whole"]]
    sweep = {c: st.static_sweep([r for r in rows if r["cores"] == c]) for c in config.cores}
    summary = {"mean_improvement": sum(ratios) / len(ratios) if ratios else None,
               "mean_gain_over_whole": (sum(over_whole) / len(over_whole) if over_whole
                                        else None),
               "gain_over_one_static_batch": {str(c): {str(b): g for b, g in sw.items()}
                                              for c, sw in sweep.items()}}
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        workers = "worker processes" if config.processes else "worker threads"
        times = ("service times drawn from the profile" if config.service_times == "profiled"
                 else "median service times")
        if len(config.profile_loads) > 1:
            times += (f", curves by load (profiled at "
                      f"{', '.join(f'{x:g}' for x in config.profile_loads)})")
        mode = (f"real server, {workers}" if not config.simulate else f"simulated, {times}" if
                config.profile_workers == 1 else
                f"simulated from a profile of {config.profile_workers} {workers}, {times}")
        search = "DeepRecSys's running-p95 controller" if config.search == "controller" \
            else "bisection"
        print(f"latency-bounded throughput ({mode}; rates by {search}; {config.process} arrivals, "
              f"{config.sizes.describe()} items, {config.distribution} rows, scale "
              f"{config.scale:g})")
        print(f"static baseline: every query split into sub-requests of "
              f"{config.static_batch} items; 'vs whole': DeepRecSched's gain over running "
              f"every query whole")
        print(f"{'model':<7}{'cores':>6}{'target':>8}{'static QPS':>12}{'DRS QPS':>11}"
              f"{'gain':>7}{'vs whole':>9}{'batch':>7}{'offload':>9}{'p50 ms':>8}"
              f"{'p95 ms':>8}{'p99 ms':>8}")
        for r in rows:
            off = "-" if r["offload_threshold"] is None else f">={r['offload_threshold']}"
            print(f"{r['model']:<7}{r['cores']:>6}{r['target_ms']:>8g}{r['static_qps']:>12,.0f}"
                  f"{r['deeprecsched_qps']:>11,.0f}{_fmt_ratio(r['improvement']):>7}"
                  f"{_fmt_ratio(r['gain_over_whole']):>9}"
                  f"{r['batch_size']:>7}{off:>9}{_fmt_num(r['p50_ms'], 2):>8}"
                  f"{_fmt_num(r['p95_ms'], 2):>8}{_fmt_num(r['p99_ms'], 2):>8}")
        if len(ratios) > 1:
            whole = (f"; {summary['mean_gain_over_whole']:.2f}x over whole queries "
                     f"({len(over_whole)} runs)" if over_whole else "")
            print(f"mean improvement {summary['mean_improvement']:.2f}x over {len(ratios)} runs"
                  f"{whole}")
        if len(config.models) > 1:
            print("mean gain over one static batch size for every model (-: that size meets "
                  "no rate for some model):")
            for c, sw in sweep.items():
                print(f"  {c} cores: " + ", ".join(f"{b} {_fmt_ratio(g)}"
                                                   for b, g in sw.items()))
        unserved = [r for r in rows if r["static_qps"] == 0 and r["deeprecsched_qps"] > 0]
        if unserved:
            print(f"the static baseline meets the target at no rate in {len(unserved)} run(s) "
                  f"({', '.join(sorted({r['model'] for r in unserved}))}); DeepRecSched "
                  f"serves them")
    print(f"wall time {wall:.1f} s", file=sys.stderr)
    _write_study(args, rows, summary, st.config_dict(config), wall, st.plot_study,
                 lambda m: print(m, file=sys.stderr))
    return 0


def _cmd_moe(args: argparse.Namespace) -> int:
    from .cache import POLICIES
    from .moe import study as st

    config = st.MoEStudyConfig(
        num_experts=args.experts, d_model=args.d_model, d_hidden=args.d_hidden,
        top_k=args.top_k, batches=args.batches, tokens=args.tokens, trace=args.trace,
        zipf_s=args.zipf, locality=args.locality,
        slots=args.slots or st.MoEStudyConfig.slots, policies=args.policies or POLICIES,
        timed_batches=args.timed_batches, gating_tokens=args.gating_tokens,
        devices=args.devices, seed=args.seed)
    if args.plot and not _matplotlib_available():
        print(f"--plot {args.plot}: matplotlib is not installed; no chart.", file=sys.stderr)
    steps = len({min(s, config.num_experts) for s in config.slots}) * len(config.policies) + 4
    rows, wall = _run_study(st.iter_study, config, steps)
    summary = st.summarize_study(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        lines = [f"{config.num_experts} experts of {config.d_model}->{config.d_hidden}, top-"
                 f"{config.top_k}, {config.batches} batches of {config.tokens} tokens "
                 f"({config.trace} trace)",
                 f"{'policy':<14}{'slots':>6}{'miss rate':>11}{'Belady':>9}{'copied MiB':>12}"
                 f"{'memory /':>10}{'throughput':>12}"]
        for r in rows:
            if r["kind"] == "cache":
                lines.append(f"{r['policy']:<14}{r['slots']:>6}{r['miss_rate']:>11.3f}"
                             f"{r['belady_miss_rate']:>9.3f}{r['bytes_copied'] / 2**20:>12.0f}"
                             f"{r['memory_reduction']:>9.2f}x{r['throughput_ratio']:>11.2f}x")
        for r in rows:
            if r["kind"] == "gating":
                lines.append(f"{r['gating']} gating, {r['tokens']} tokens: "
                             f"{r['ms_per_batch']:.1f} ms, intermediates "
                             f"{r['intermediate_mb']:.1f} MiB, dropped "
                             f"{r['dropped_fraction']:.1%}")
        lines.append("max device load per batch: " + ", ".join(
            f"{m} {v:.3f}" for m, v in summary["placement"].items()))
        print("\n".join(lines))
    print(f"wall time {wall:.1f} s", file=sys.stderr)
    _write_study(args, rows, summary, st.config_dict(config), wall, st.plot_study,
                 lambda m: print(m, file=sys.stderr))
    return 0


def _cpus_busy(seconds: float = 0.3) -> Optional[float]:
    """How many CPUs' worth of time the machine spent busy over ``seconds`` while this process
    slept (Linux ``/proc/stat``), i.e. what other processes use; None where unknown."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0)


def _loadavg() -> Optional[float]:
    """The 1-minute load average, where the OS reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _version(module: str) -> Optional[str]:
    mod = sys.modules.get(module)
    return getattr(mod, "__version__", None) if mod is not None else None


def _cmd_info(args: argparse.Namespace) -> int:
    import recengine

    info = recengine.build_info()
    if args.json:
        print(json.dumps(_jsonable(info), indent=1, default=str))
        return 0
    rich = _rich()
    if rich is not None:
        table = rich.table.Table(title=f"recengine {recengine.__version__}", show_header=False,
                                 title_justify="left")
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in info.items():
            table.add_row(str(key), str(value))
        rich.console.Console().print(table)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
