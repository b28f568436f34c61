"""``recengine bench-models``: whole DeepRecInfra models on torch's embeddings against
recengine's (:mod:`recengine.modelbench`)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a
from ._output import fmt_ratio

__all__ = ["STUDY", "ModelBenchStudy"]


class ModelBenchStudy(Study):
    name = "bench-models"
    help = "time whole DeepRecInfra models on torch's embeddings against recengine's"
    description = (
        "Build each model on torch.nn.EmbeddingBag tables, as recengine.nn.convert-ed "
        "drop-in modules and on recengine's EmbeddingBagCollection, with the same weights, "
        "and time whole eval forwards and training steps (forward, backward, SGD step), the "
        "routes taking turns call by call in this process on the same thread count. "
        "Prints torch's time and each route's speedup over it.")
    options = (
        Option("--models", "comma-separated models (default: rmc1,rmc2,rmc3)",
               parse=a.comma_list(a.model, "model")),
        Option("--batches", "comma-separated batch sizes (default: 1,16,64,256,1024)",
               parse=a.comma_list(a.positive_int, "batch")),
        Option("--steps", "forward and/or train (default: both)",
               parse=a.comma_list(a.one_of("modelbench", "STEPS"), "step")),
        Option("--routes", "recengine routes: convert, collection, compiled (torch.compile of "
                           "the converted model, forwards only) (default: convert,collection)",
               parse=a.comma_list(a.one_of("modelbench", "ROUTES"), "route")),
        Option("--threads", "threads for torch and recengine alike (default: all cores)",
               parse=a.positive_int),
        Option("--scale", "table row factor (default: 0.05; 1 is the paper's size)",
               parse=a.positive_float),
        Option("--repeats", "timed calls per route and case (default: 25)",
               parse=a.positive_int),
        Option("--warmup", "untimed calls first (default: 3)", parse=a.int_in(0, 10**6)),
        Option("--budget", "seconds of timed calls per route and case (default: 2)",
               dest="budget_s", parse=a.positive_float, metavar="SECONDS"),
        Option("--seed", "seed of weights and batches", parse=a.seed),
    )
    quick: ClassVar[Mapping[str, Any]] = {
        "models": ["ncf"], "batches": [4], "scale": 0.001, "repeats": 2, "warmup": 0,
        "steps": ["forward"]}
    needs: ClassVar[Mapping[str, str]] = {"torch": 'pip install "recengine[torch]"'}
    plot_help = "write a chart of each route's speedup over torch by batch"
    json_prints = "doc"

    def config_class(self) -> type:
        from ..modelbench import ModelBenchConfig
        return ModelBenchConfig

    def total(self, config: Any) -> int:
        return len(config.models) * (len(config.steps) * len(config.batches) + 1)

    def rows(self, config: Any, status: Callable[[str], None],
             tick: Callable[[], None]) -> Iterator[dict[str, Any]]:
        from ..modelbench import iter_model_bench
        return iter_model_bench(config, status)

    def summarize(self, rows: Sequence[dict[str, Any]], config: Any) -> Any:
        from ..modelbench import summarize_models
        return summarize_models(rows)

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        routes = list(dict.fromkeys(r["route"] for r in rows))
        threads = rows[0]["threads"] if rows else "?"
        pool = rows[0]["pool"] if rows else "?"
        title = (f"whole models, {threads} threads for torch and recengine (recengine on the "
                 f"{pool} pool); speedup = torch time / route time, median per call, "
                 f"alternating")
        body = []
        for model, step, batch in dict.fromkeys((r["model"], r["step"], r["batch"])
                                                for r in rows):
            got = {r["route"]: r for r in rows
                   if (r["model"], r["step"], r["batch"]) == (model, step, batch)}
            first = next(iter(got.values()))
            body.append([model, step, str(batch), f"{first['torch_ms']:.3f}", *(
                fmt_ratio(got[r]["speedup"]) + ("" if got[r]["correct"] else "!")
                if r in got else "" for r in routes)])
        table = Table(title, ["model", "step", "batch", "torch ms",
                              *(f"{r} speedup" for r in routes)], body, left=2)
        lines = [f"{key}: geomean {fmt_ratio(s['geomean_b16_up'])} at batch >= 16 (target "
                 f"{s['target']:.1f}x), slowest {fmt_ratio(s['min'])} ({s['slowest']})"
                 for key, s in summary.items() if key != "all_correct"]
        if not summary.get("all_correct", True):
            lines.append("! a route's forward output differs from torch's (see max_diff in "
                         "--json)")
        return Report(tables=[table], lines=lines)

    def plot(self, rows: Sequence[dict[str, Any]], path: str, config: Any) -> None:
        from ..modelbench import plot_models
        plot_models(rows, path, config)

    def config_dict(self, config: Any) -> dict[str, Any]:
        from ..modelbench import config_dict
        return config_dict(config)


STUDY = ModelBenchStudy()
