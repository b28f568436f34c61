"""Whole-model benchmark: the DeepRecInfra models on torch's embeddings against recengine's.

Each model is built three ways with the same weights (:func:`recengine.models.build`):

* **torch**: ``embeddings="torch"``, one ``torch.nn.EmbeddingBag`` per table, each feature its
  own call, as a torch user writes it;
* **convert**: that same model after :func:`recengine.nn.convert` (the drop-in route);
* **collection**: recengine's own route, every pooled feature in one
  :class:`recengine.nn.EmbeddingBagCollection` core call;
* **compiled** (forward only, opt-in): ``torch.compile`` of the converted model.

Each case (model, step, batch) times whole calls, the routes taking turns call by call in one
process (as a server running both would), each call on a fresh random batch from a cycle of
``index_sets``, so rows come from memory rather than from the cache the last call warmed.
``forward`` is an eval forward under ``torch.no_grad()``; ``train`` is one training step:
forward in train mode, an MSE loss, backward, and an SGD step over every parameter (the
embedding weights with sparse gradients, as DLRM trains). torch and recengine run on the same
thread count. A route's ``speedup`` is torch's median time over its own; its forward outputs
are checked against torch's once per case, outside the timing.

Example::

    >>> from recengine.modelbench import ModelBenchConfig, run_model_bench
    >>> rows = run_model_bench(ModelBenchConfig(models=("ncf",), batches=(4,), steps=("forward",),
    ...                                         scale=0.001, repeats=3, warmup=1))
    >>> sorted(r["route"] for r in rows), all(r["correct"] for r in rows)
    (['collection', 'convert'], True)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from . import build_info
from .bench import DEFAULT_BATCHES, _alternate, _Threads, _Timer, default_threads
from .shapes import resolve_model

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_ROUTES",
    "ROUTES",
    "STEPS",
    "TARGETS",
    "ModelBenchConfig",
    "build_routes",
    "config_dict",
    "iter_model_bench",
    "plot_models",
    "run_model_bench",
    "summarize_models",
]

#: recengine's routes, each compared with the model on torch's own embeddings.
ROUTES: tuple[str, ...] = ("convert", "collection", "compiled")
DEFAULT_ROUTES: tuple[str, ...] = ("convert", "collection")
#: What a call does: an eval forward, or a training step (forward, backward, SGD step).
STEPS: tuple[str, ...] = ("forward", "train")
DEFAULT_MODELS: tuple[str, ...] = ("rmc1", "rmc2", "rmc3")
#: The speedups the project aims at, per step, at batch >= 16 (none below 1.0x anywhere).
TARGETS: dict[str, float] = {"forward": 1.3, "train": 1.1}


@dataclass
class ModelBenchConfig:
    """What :func:`run_model_bench` measures.

    Args:
        models: DeepRecInfra model names (:func:`recengine.models.model_names`).
        batches: samples per call.
        steps: from :data:`STEPS`.
        routes: recengine routes from :data:`ROUTES` (torch is always timed);
            ``"compiled"`` runs forwards only.
        threads: threads for torch and recengine alike; None: all cores.
        scale: table row factor of :func:`recengine.models.build`.
        repeats: most timed calls per route and case (the median is reported).
        warmup: untimed calls per route and case first (a compiled route compiles in them).
        budget_s: seconds of timed calls per route and case, after which the case stops early.
        index_sets: random batches each case cycles through.
        lr: the SGD step's learning rate.
        seed: seed of the weights and the batches.
    """

    models: Sequence[str] = DEFAULT_MODELS
    batches: Sequence[int] = DEFAULT_BATCHES
    steps: Sequence[str] = STEPS
    routes: Sequence[str] = DEFAULT_ROUTES
    threads: Optional[int] = None
    scale: float = 0.05
    repeats: int = 25
    warmup: int = 3
    budget_s: float = 2.0
    index_sets: int = 8
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        self.models = tuple(resolve_model(m) for m in self.models)
        self.batches = tuple(int(b) for b in self.batches)
        self.steps = tuple(dict.fromkeys(str(s).lower() for s in self.steps))
        self.routes = tuple(dict.fromkeys(str(r).lower() for r in self.routes))
        if not self.models:
            raise ValueError("no models to benchmark")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {self.batches}")
        bad = [s for s in self.steps if s not in STEPS]
        if bad or not self.steps:
            raise ValueError(f"unknown step(s) {bad}; expected some of {', '.join(STEPS)}")
        bad = [r for r in self.routes if r not in ROUTES]
        if bad or not self.routes:
            raise ValueError(f"unknown route(s) {bad}; expected some of {', '.join(ROUTES)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")
        if self.repeats < 1 or self.warmup < 0 or self.index_sets < 1 or not self.budget_s > 0:
            raise ValueError("repeats and index_sets must be >= 1, warmup >= 0 and budget_s > 0")

    def routes_for(self, step: str) -> tuple[str, ...]:
        """The routes timed for ``step`` (a compiled route runs forwards only)."""
        return tuple(r for r in self.routes if step == "forward" or r != "compiled")


def build_routes(name: str, scale: float, routes: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Model ``name`` as ``{"torch": ..., route: ...}`` for each of ``routes``, every one
    with the same weights (sparse embedding gradients, eval mode). Each route owns its
    weights, so training steps of one leave the others' alone."""
    import torch

    from .models import build
    from .nn import convert

    base = build(name, scale=scale, seed=seed, sparse=True)
    state = base.state_dict()

    def torch_model() -> torch.nn.Module:
        m = build(name, scale=scale, seed=None, embeddings="torch", sparse=True)
        m.load_state_dict(state)
        return m.eval()

    out: dict[str, Any] = {"torch": torch_model()}
    if "convert" in routes or "compiled" in routes:
        out["convert"] = convert(torch_model()).eval()
    if "compiled" in routes:
        out["compiled"] = torch.compile(out["convert"])
    if "collection" in routes:
        out["collection"] = base
    return {k: out[k] for k in ("torch", *routes)}


def _runner(model: Any, step: str, lr: float) -> Callable[[tuple[Any, Any]], Any]:
    import torch

    if step == "forward":
        model.eval()

        def forward(item: tuple[Any, Any]) -> Any:
            with torch.no_grad():
                return model(item[0])

        return forward
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def train(item: tuple[Any, Any]) -> Any:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(item[0]), item[1])
        loss.backward()
        opt.step()
        return loss

    return train


def iter_model_bench(config: ModelBenchConfig,
                     status: Callable[[str], None] = lambda _m: None) -> Iterator[dict[str, Any]]:
    """Yield one row per (model, step, batch, route), as each case finishes; ``status`` gets a
    line before each case (for progress output)."""
    import torch

    threads = config.threads or default_threads()
    with _Threads(threads, torch):
        for name in config.models:
            status(f"{name}: building (scale {config.scale:g})")
            models = build_routes(name, config.scale, config.routes, config.seed)
            for step in config.steps:
                routes = config.routes_for(step)
                for batch in config.batches:
                    status(f"{name} {step} batch {batch}")
                    yield from _case(config, name, models, step, routes, batch, threads)
            del models


def _case(config: ModelBenchConfig, name: str, models: dict[str, Any], step: str,
          routes: Sequence[str], batch: int, threads: int) -> Iterator[dict[str, Any]]:
    import torch

    ref = models["torch"]
    inputs = [ref.sample_batch(batch, seed=config.seed * 7919 + k)
              for k in range(config.index_sets)]
    checks: dict[str, tuple[bool, float]] = {}
    with torch.no_grad():
        want = ref.eval()(inputs[0])  # torch's output: the checks' reference and the targets' shape
        for r in routes:
            got = models[r].eval()(inputs[0])
            diff = float((got - want).abs().max())
            checks[r] = (bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5)), diff)
    sets = [(b, torch.from_numpy(np.random.default_rng(k).random(tuple(want.shape),
                                                                  dtype=np.float32)))
            for k, b in enumerate(inputs)]
    impls = ("torch", *routes)
    timers = {k: _Timer(_runner(models[k], step, config.lr), sets, config.warmup) for k in impls}
    _alternate([timers[k] for k in impls], config.repeats, config.budget_s)
    torch_s = timers["torch"].median
    pool = build_info()["pool"]
    for r in routes:
        rec_s = timers[r].median
        yield {
            "model": name, "step": step, "route": r, "batch": batch, "threads": threads,
            "torch_ms": torch_s * 1e3, "recengine_ms": rec_s * 1e3, "speedup": torch_s / rec_s,
            "calls": len(timers[r].times), "correct": checks[r][0], "max_diff": checks[r][1],
            "pool": pool,
        }


def run_model_bench(config: ModelBenchConfig,
                    status: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Every row of :func:`iter_model_bench`."""
    return list(iter_model_bench(config, status))


def summarize_models(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per ``step/route``: geometric mean and minimum speedup at batch >= 16 and overall, the
    slowest case, and whether :data:`TARGETS` hold (geomean at batch >= 16 at the target and
    no case below 1.0x)."""
    out: dict[str, Any] = {"all_correct": all(r["correct"] for r in rows)}
    for key in dict.fromkeys((r["step"], r["route"]) for r in rows):
        group = [r for r in rows if (r["step"], r["route"]) == key]
        big = [r["speedup"] for r in group if r["batch"] >= 16]
        slowest = min(group, key=lambda r: r["speedup"])
        geo = math.exp(statistics.fmean(math.log(v) for v in big)) if big else None
        out[f"{key[0]}/{key[1]}"] = {
            "geomean_b16_up": geo,
            "min_b16_up": min(big) if big else None,
            "min": slowest["speedup"],
            "slowest": f"{slowest['model']} b{slowest['batch']}",
            "target": TARGETS[key[0]],
            "met": geo is not None and geo >= TARGETS[key[0]] and slowest["speedup"] >= 1.0,
        }
    return out


def config_dict(config: ModelBenchConfig) -> dict[str, Any]:
    """The config as plain JSON values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}



def plot_models(rows: Sequence[dict[str, Any]], path: str,
                config: Optional[ModelBenchConfig] = None) -> None:
    """Speedup over torch by batch: one panel per step, one line per model and route, the 1x
    parity line, the thread count in the title."""
    from matplotlib.ticker import FuncFormatter

    from .studies._output import figure, save_figure

    steps = list(dict.fromkeys(r["step"] for r in rows))
    fig, axes = figure(len(steps), columns=len(steps), size=(6.0, 4.2))
    batches = sorted({r["batch"] for r in rows})
    for ax, step in zip(axes, steps):
        for key in dict.fromkeys((r["model"], r["route"]) for r in rows if r["step"] == step):
            pts = sorted((r["batch"], r["speedup"]) for r in rows
                         if r["step"] == step and (r["model"], r["route"]) == key)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=" ".join(key))
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="as fast as torch")
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch (samples per call)")
        ax.set_ylabel("torch time / recengine route time (x)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))
        ax.set_title(step)
        ax.legend(fontsize=7, loc="best")
    threads = rows[0]["threads"] if rows else "?"
    save_figure(fig, path, f"whole models, recengine's embeddings against torch's, {threads} "
                           f"threads")
