"""The benchmark's module ops (``forward``, ``forward_backward``): recengine.nn's
EmbeddingBagCollection and drop-in modules against torch's EmbeddingBag, through the Python
API and the command line, on tiny tables."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from recengine.bench import (  # noqa: E402
    BenchConfig,
    grads_agree,
    planned_rows,
    run_bench,
    summarize,
)
from recengine.cli import main  # noqa: E402

# A tiny, fast case: ncf's four tables scaled to 1 MiB in all, batch 4, two calls a route.
_TINY = dict(models=("ncf",), batches=(4,), dtypes=("fp32",), table_mb=1.0, repeats=2,
             rounds=2, budget_s=0.02, evict_mb=1.0, fresh_mb=0.5, threads=2, probe=False)


def _check_module_row(row: dict[str, Any], op: str) -> None:
    assert row["op"] == op and row["dtype"] == "fp32" and row["batch"] == 4
    assert row["tables"] == 4 and row["lookups"] == 4 * 4  # ncf: 4 tables x 1 lookup
    for key in ("recengine_s", "torch_s", "modules_s", "ratio_vs_torch",
                "ratio_modules_vs_torch", "recengine_lookups_per_s"):
        assert row[key] is not None and math.isfinite(row[key]) and row[key] > 0, key
    assert row["ratio_vs_torch"] == pytest.approx(row["torch_s"] / row["recengine_s"])
    assert row["ratio_modules_vs_torch"] == pytest.approx(row["torch_s"] / row["modules_s"])
    for key in ("numpy_s", "probe_s", "ratio_vs_numpy", "probe_fraction"):
        assert row[key] is None, key
    assert row["correct"] is True, row
    assert row["correct_vs_torch"] is True and row["modules_correct_vs_torch"] is True


def test_module_ops_rows() -> None:
    config = BenchConfig(ops=("pool", "forward", "forward_backward"), **_TINY)
    assert planned_rows(config) == 3
    rows = run_bench(config)
    assert [r["op"] for r in rows] == ["pool", "forward", "forward_backward"]
    assert rows[0]["correct"] is True and rows[0]["modules_s"] is None
    _check_module_row(rows[1], "forward")
    _check_module_row(rows[2], "forward_backward")
    assert rows[1]["grad"] is None and rows[2]["grad"] == "sparse"
    summary = summarize(rows)
    assert summary["all_correct"] is True
    assert set(summary["per_op"]) == {"pool", "forward", "forward_backward"}
    fwd = summary["per_op"]["forward"]
    assert fwd["small_batch"]["n"] == 1 and fwd["large_batch"]["n"] == 0
    assert [(t["group"], t["target"]) for t in fwd["targets"]] == [
        ("large_batch", 1.5), ("small_batch", 3.0)]
    assert fwd["targets"][0]["met"] is None  # no batch >= 64 measured
    assert summary["ratio_vs_torch_small_batch"]["n"] == 1  # the pool op's, as before


def test_forward_backward_dense_grads() -> None:
    rows = run_bench(BenchConfig(ops=("forward_backward",), grad="dense", **_TINY))
    [row] = rows
    _check_module_row(row, "forward_backward")
    assert row["grad"] == "dense"


def test_module_ops_skip_int8() -> None:
    config = BenchConfig(**{**_TINY, "dtypes": ("fp32", "int8")}, ops=("forward",))
    assert config.case_ops("int8") == () and config.case_ops("fp32") == ("forward",)
    with pytest.raises(ValueError, match="fp32 tables only"):
        BenchConfig(**{**_TINY, "dtypes": ("int8",)}, ops=("forward",))
    with pytest.raises(ValueError, match="unsupported op"):
        BenchConfig(**_TINY, ops=("backward",))
    with pytest.raises(ValueError, match="grad"):
        BenchConfig(**_TINY, grad="fp16")


def test_grads_agree_catches_differences() -> None:
    def sparse(rows: list[int], values: list[float]) -> Any:
        v = torch.tensor(values, dtype=torch.float32)[:, None].repeat(1, 2)
        return torch.sparse_coo_tensor(torch.tensor([rows]), v, (10, 2),
                                       check_invariants=True).coalesce()

    a = [sparse([1, 3], [1.0, 2.0])]
    assert grads_agree(a, [sparse([3, 1], [2.0, 1.0])], [1]) == (True, 0.0)
    assert grads_agree(a, [sparse([1, 4], [1.0, 2.0])], [1])[0] is False  # other rows
    ok, diff = grads_agree(a, [sparse([1, 3], [1.0, 2.5])], [1])  # other values
    assert ok is False and diff == pytest.approx(0.5)
    assert grads_agree(a, [sparse([1, 3], [1.0, 2.0]).to_dense()], [1])[0] is False
    dense = [torch.ones(10, 2)]
    assert grads_agree(dense, [torch.ones(10, 2) + 1e-7], [1])[0] is True
    assert grads_agree([None], [None], [1]) == (True, 0.0)


def test_summary_targets() -> None:
    def row(op: str, batch: int, ratio: float) -> dict[str, Any]:
        return {"model": "m", "batch": batch, "dtype": "fp32", "op": op, "correct": True,
                "ratio_vs_torch": ratio, "ratio_modules_vs_torch": ratio / 2,
                "recengine_lookups_per_s": 1.0, "torch_lookups_per_s": 1.0,
                "probe_fraction": None}

    rows = [row("forward", 1, 4.0), row("forward", 16, 2.0), row("forward", 64, 1.6),
            row("forward_backward", 1, 1.3), row("forward_backward", 1024, 0.9)]
    per_op = summarize(rows)["per_op"]
    assert set(per_op) == {"forward", "forward_backward"}
    met = {(op, t["group"]): t["met"] for op, o in per_op.items() for t in o["targets"]}
    assert met == {("forward", "large_batch"): True, ("forward", "small_batch"): False,
                   ("forward_backward", "all"): False}
    assert per_op["forward"]["small_batch"]["geomean"] == pytest.approx(math.sqrt(8.0))
    assert per_op["forward_backward"]["all"]["min"] == 0.9
    assert per_op["forward"]["modules_vs_torch"]["n"] == 3
    slow = summarize(rows)["slower_than_torch"]
    assert [(s["op"], s["batch"]) for s in slow] == [("forward_backward", 1024)]


def test_cli_ops_forward(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--quick", "--json", "--ops", "forward", "--batches", "1",
                 "--threads", "2", "--no-probe"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)
    assert [(r["op"], r["dtype"], r["batch"]) for r in rows] == [("forward", "fp32", 1)]
    assert rows[0]["correct"] is True and rows[0]["recengine_s"] > 0


def test_cli_ops_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The printed table has the op column and the summary the per-op lines."""
    code = main(["bench", "--quick", "--ops", "forward_backward", "--grad", "dense",
                 "--dtypes", "fp32", "--batches", "1", "--threads", "2", "--no-probe"])
    out = capsys.readouterr().out
    assert code == 0
    assert "forward_backward" in out and "op" in out
    assert "forward_backward vs torch, all batches (target >= 1.2x)" in out


def test_cli_rejects_unknown_op(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--ops", "pool,backward"])
    assert exc.value.code == 2
    assert "'backward' is not one of pool, forward, forward_backward" in capsys.readouterr().err


@pytest.mark.parametrize("timing", ["alternate", "blocks"])
def test_both_timings_give_checked_rows(timing: str) -> None:
    rows = run_bench(BenchConfig(**{**_TINY, "ops": ("pool", "forward")}, timing=timing))
    assert {r["op"] for r in rows} == {"pool", "forward"}
    assert all(r["correct"] and r["ratio_vs_torch"] > 0 for r in rows)


def test_unknown_timing_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="timing"):
        BenchConfig(timing="interleaved")


def test_kernels_vs_fbgemm_script_runs(tmp_path: Any) -> None:
    """benches/kernels_vs_fbgemm.py on tiny tables: it checks the outputs agree, and writes
    one row per dtype and batch."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benches" / "kernels_vs_fbgemm.py"
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(script), "--tables", "2", "--rows", "1000", "--dim", "16",
         "--pooling", "4", "--batches", "1,8", "--repeats", "3", "--budget", "0.01",
         "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["dtype"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 8), ("int8", 1),
                                                        ("int8", 8)]
    assert all(r["ratio"] > 0 and r["calls"] >= 1 for r in rows)
