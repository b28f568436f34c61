"""The ``recengine`` command line: a tiny ``bench --quick`` run end to end, and ``info``."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from recengine.cli import main

REQUIRED = (
    "model", "batch", "dtype", "op", "threads", "lookups",
    "recengine_lookups_per_s", "torch_lookups_per_s", "numpy_lookups_per_s",
    "ratio_vs_torch", "recengine_gb_per_s", "probe_fraction", "correct",
    "recengine_s", "torch_s", "numpy_s",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``bench --quick --json --out FILE`` run, shared by the tests below."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["bench", "--quick", "--json", "--threads", "2", "--out", str(out)])
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
            "out": out}


def test_bench_quick_json_rows(quick_run: dict[str, Any]) -> None:
    assert quick_run["code"] == 0, quick_run["stderr"]
    rows = json.loads(quick_run["stdout"])  # stdout holds the JSON list and nothing else
    assert isinstance(rows, list)
    for row in rows:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, f"row lacks {missing}"
    # Every op by default; the module ops on fp32 tables only.
    assert {(r["batch"], r["dtype"], r["op"]) for r in rows} == {
        (1, "fp32", "pool"), (16, "fp32", "pool"), (1, "int8", "pool"), (16, "int8", "pool"),
        (1, "fp32", "forward"), (16, "fp32", "forward"),
        (1, "fp32", "forward_backward"), (16, "fp32", "forward_backward")}
    pool = [r for r in rows if r["op"] == "pool"]
    for row in pool:
        assert row["model"] == "rmc1"
        assert row["threads"] == 2
        assert row["lookups"] == row["batch"] * 8 * 80  # rmc1: 8 tables x 80 lookups
        for key in ("recengine_lookups_per_s", "torch_lookups_per_s", "numpy_lookups_per_s",
                    "recengine_gb_per_s", "ratio_vs_torch", "probe_fraction"):
            assert row[key] is not None and math.isfinite(row[key]) and row[key] > 0, key
        assert row["recengine_lookups_per_s"] == pytest.approx(
            row["lookups"] / row["recengine_s"])
        assert row["ratio_vs_torch"] == pytest.approx(row["torch_s"] / row["recengine_s"])
        assert row["correct"] is True, row
    for row in (r for r in rows if r["op"] != "pool"):
        assert row["lookups"] == row["batch"] * 8 * 80
        for key in ("recengine_lookups_per_s", "torch_lookups_per_s", "modules_lookups_per_s",
                    "ratio_vs_torch", "ratio_modules_vs_torch"):
            assert row[key] is not None and math.isfinite(row[key]) and row[key] > 0, key
        assert row["numpy_s"] is None and row["probe_fraction"] is None
        assert row["grad"] == ("sparse" if row["op"] == "forward_backward" else None)
        assert row["correct"] is True, row


def test_bench_out_file(quick_run: dict[str, Any]) -> None:
    doc = json.loads(Path(quick_run["out"]).read_text())
    assert doc["rows"] == json.loads(quick_run["stdout"])
    summary = doc["summary"]
    assert summary["all_correct"] is True
    assert summary["ratio_vs_torch_small_batch"]["n"] == 2
    assert summary["per_op"]["forward"]["small_batch"]["n"] == 2
    assert summary["per_op"]["forward_backward"]["all"]["n"] == 2
    assert summary["int8_over_fp32"]["n"] == 2
    assert doc["config"]["models"] == ["rmc1"]
    assert doc["config"]["ops"] == ["pool", "forward", "forward_backward"]


def test_bench_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "ratio.png"
    code = main(["bench", "--quick", "--json", "--dtypes", "fp32", "--batches", "1",
                 "--no-probe", "--plot", str(png)])
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.loads(capsys.readouterr().out)


def test_bench_without_torch(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """No torch: the torch columns are None, a warning says why, and the rest still runs."""
    from recengine import bench

    monkeypatch.setitem(sys.modules, "torch", None)  # makes ``import torch`` fail
    monkeypatch.setattr(bench, "_TORCH", None)
    monkeypatch.setattr(bench, "_TORCH_CHECKED", False)
    code = main(["bench", "--quick", "--json", "--dtypes", "fp32", "--batches", "1",
                 "--no-probe"])
    captured = capsys.readouterr()
    assert code == 0
    [row] = json.loads(captured.out)
    assert row["torch_lookups_per_s"] is None and row["ratio_vs_torch"] is None
    assert row["recengine_lookups_per_s"] > 0 and row["correct"] is True  # checked vs numpy
    assert "torch is not installed" in captured.err


def test_bench_rejects_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--models", "rmc9"])
    assert exc.value.code == 2
    assert "unknown model 'rmc9'" in capsys.readouterr().err


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "version" in info


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize("argv, option", [
    (["shard", "--shards", "100000"], "--shards"),
    (["moe", "--tokens", "1000000000"], "--tokens"),
    (["moe", "--experts", "1000000000"], "--experts"),
    (["moe", "--locality", "2"], "--locality"),
    (["moe", "--zipf", "nan"], "--zipf"),
    (["serve", "--queries", "-5"], "--queries"),
    (["serve", "--patience", "-3"], "--patience"),
    (["serve", "--simulate", "--cores", "100000"], "--cores"),
    (["nmp", "--zipf", "nan"], "--zipf"),
    (["nmp", "--sls-fraction", "inf"], "--sls-fraction"),
    (["bench", "--seed", "-1"], "--seed"),
    (["bench-models", "--warmup", "-1"], "--warmup"),
])
def test_options_out_of_range_are_refused_before_any_work(
        argv: list[str], option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}:" in err, err


def test_impossible_runs_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    import torch

    cases = [(["moe", "--experts", "65536", "--d-model", "65536"], "GiB available")]
    if not torch.cuda.is_available():
        cases.append((["serve", "--accelerator", "cuda"], "needs a CUDA device"))
    for argv, message in cases:
        t0 = time.perf_counter()
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert time.perf_counter() - t0 < 10


def test_an_unreachable_ray_address_is_refused_at_once() -> None:
    import time

    from recengine.shard.distributed import _check_reachable

    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"no Ray cluster answers at 127\.0\.0\.1:1"):
        _check_reachable("127.0.0.1:1")
    assert time.perf_counter() - t0 < 6
    _check_reachable(None)
    _check_reachable("auto")
