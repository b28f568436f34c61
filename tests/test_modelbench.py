"""The whole-model benchmark (``recengine bench-models``): rows, checks, summary and the
command line, on tiny models."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from recengine import modelbench  # noqa: E402
from recengine.cli import main  # noqa: E402
from recengine.modelbench import ModelBenchConfig, run_model_bench, summarize_models  # noqa: E402

TINY = dict(models=("ncf",), batches=(2, 16), scale=0.001, repeats=3, warmup=1, budget_s=0.05,
            threads=2)
KEYS = ("model", "step", "route", "batch", "threads", "torch_ms", "recengine_ms", "speedup",
        "calls", "correct", "max_diff", "pool")


def test_rows_for_every_step_route_and_batch() -> None:
    rows = run_model_bench(ModelBenchConfig(**TINY))
    assert {(r["step"], r["route"], r["batch"]) for r in rows} == {
        (s, r, b) for s in ("forward", "train") for r in ("convert", "collection")
        for b in (2, 16)}
    for row in rows:
        assert all(k in row for k in KEYS), row
        assert row["speedup"] == pytest.approx(row["torch_ms"] / row["recengine_ms"])
        assert math.isfinite(row["speedup"]) and row["calls"] >= 1
        assert row["correct"] and row["max_diff"] < 1e-5 and row["threads"] == 2


def test_compiled_route_runs_forwards_only() -> None:
    config = ModelBenchConfig(**{**TINY, "batches": (4,)}, routes=("compiled",))
    assert config.routes_for("train") == () and config.routes_for("forward") == ("compiled",)
    rows = run_model_bench(ModelBenchConfig(**{**TINY, "batches": (4,)}, routes=("compiled",),
                                            steps=("forward",)))
    assert [(r["route"], r["correct"]) for r in rows] == [("compiled", True)]


def test_a_wrong_route_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real = modelbench.build_routes

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        models = real(*args, **kwargs)
        with torch.no_grad():
            for p in models["collection"].parameters():
                p.add_(0.5)
        return models

    monkeypatch.setattr(modelbench, "build_routes", broken)
    rows = run_model_bench(ModelBenchConfig(**{**TINY, "batches": (4,)}, steps=("forward",)))
    got = {r["route"]: r["correct"] for r in rows}
    assert got == {"convert": True, "collection": False}
    assert summarize_models(rows)["all_correct"] is False


def test_summary_targets() -> None:
    def row(step: str, batch: int, speedup: float) -> dict[str, Any]:
        return {"model": "m", "step": step, "route": "collection", "batch": batch,
                "speedup": speedup, "correct": True}

    good = summarize_models([row("forward", 1, 1.1), row("forward", 16, 1.4),
                             row("forward", 64, 1.5), row("train", 16, 1.2)])
    assert good["forward/collection"]["met"] and good["train/collection"]["met"]
    assert good["forward/collection"]["geomean_b16_up"] == pytest.approx(math.sqrt(1.4 * 1.5))
    slow_small = summarize_models([row("forward", 1, 0.9), row("forward", 16, 2.0)])
    assert not slow_small["forward/collection"]["met"]  # one case below 1.0x
    assert slow_small["forward/collection"]["slowest"] == "m b1"
    low = summarize_models([row("train", 16, 1.05), row("train", 256, 1.08)])
    assert not low["train/collection"]["met"]


def test_bad_configs_are_value_errors() -> None:
    for bad in (dict(steps=("infer",)), dict(routes=("fbgemm",)), dict(batches=(0,)),
                dict(models=()), dict(threads=0), dict(scale=0.0), dict(repeats=0),
                dict(models=("rmc9",))):
        with pytest.raises(ValueError):
            ModelBenchConfig(**bad)  # type: ignore[arg-type]


def test_cli_json_out_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "m.json", tmp_path / "m.png"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["bench-models", "--models", "ncf", "--batches", "4", "--scale", "0.001",
                     "--repeats", "2", "--warmup", "1", "--threads", "2", "--steps", "forward",
                     "--json", "--out", str(out), "--plot", str(png)])
    assert code == 0, stderr.getvalue()
    doc = json.loads(stdout.getvalue())
    assert {r["route"] for r in doc["rows"]} == {"convert", "collection"}
    assert "forward/convert" in doc["summary"]
    assert json.loads(out.read_text())["config"]["models"] == ["ncf"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_table_and_bad_route(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-models", "--models", "ncf", "--batches", "4", "--scale", "0.001",
                 "--repeats", "2", "--warmup", "0", "--threads", "1", "--steps", "train"]) == 0
    text = capsys.readouterr().out
    assert "speedup" in text and "train/collection" in text and "ncf" in text
    with pytest.raises(SystemExit):
        main(["bench-models", "--routes", "fbgemm"])
    assert "fbgemm" in capsys.readouterr().err
