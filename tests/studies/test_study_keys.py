"""Golden copies of each study's JSON keys: what ``--json`` prints and what ``--out`` writes
(the keys of the document, its config and summary, and of every row kind) are part of the
interface, and a refactor of the studies or the command line must leave them as they are.
After an intended change, regenerate the copies with

    RECENGINE_UPDATE_GOLDEN=1 python -m pytest tests/studies/test_study_keys.py

and review the diff of ``tests/golden/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from recengine.cli import main

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

#: Each study at a size that runs in seconds on two cores.
RUNS = {
    "bench": ["--quick", "--threads", "2", "--batches", "16"],
    "bench-models": ["--models", "ncf", "--batches", "4", "--scale", "0.001", "--repeats", "2",
                     "--warmup", "0", "--threads", "2"],
    "shard": ["--model", "wnd", "--shards", "2", "--queries", "5", "--table-mb", "4",
              "--backends", "inprocess"],
    "moe": ["--experts", "6", "--d-model", "8", "--d-hidden", "8", "--batches", "10",
            "--tokens", "3", "--slots", "2,6", "--policies", "inactive_lifo,fifo",
            "--timed-batches", "2", "--gating-tokens", "16", "--devices", "2"],
    "nmp": ["--model", "ncf", "--batch", "8", "--table-mb", "4"],
    "serve": ["--simulate", "--model", "ncf", "--cores", "4", "--scale", "0.01",
              "--batch-sizes", "1024,64", "--queries", "200"],
    "hercules": ["--quick", "--threads-only"],
    "disagg": ["--model", "ncf", "--architectures", "disaggregated", "--queries", "20",
               "--failure-span", "3", "--target-scale", "20", "--rpc-ms", "2",
               "--tco-models", "ncf,rmc1", "--kernel-mb", "4", "--years", "2"],
    "privacy": ["--folds", "2", "--max-k", "2", "--lookups", "10,100", "--trials", "2",
                "--cost-rows", "100,1000", "--batches", "1,16", "--budget", "0.01"],
}


def _row_kinds(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The keys of each kind of row (rows with a ``kind`` field, else one kind)."""
    kinds: dict[str, set[str]] = {}
    for r in rows:
        kinds.setdefault(str(r.get("kind", "row")), set()).update(r)
    return {k: sorted(v) for k, v in sorted(kinds.items())}


def _top_keys(value: Any) -> Any:
    return sorted(value) if isinstance(value, dict) else type(value).__name__


@pytest.mark.parametrize("study", sorted(RUNS))
def test_study_json_keys_are_unchanged(study: str, tmp_path: Path) -> None:
    out_file = tmp_path / "out.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([study, *RUNS[study], "--json", "--out", str(out_file)])
    assert code == 0, stderr.getvalue()
    printed = json.loads(stdout.getvalue())
    doc = json.loads(out_file.read_text())
    rows = doc["rows"]
    assert rows, "the study produced no rows"
    shape = {
        "printed": _top_keys(printed),
        "out": sorted(doc),
        "config": sorted(doc["config"]),
        # Summaries keyed by data (models, ops, cores) keep only their top level.
        "summary": _top_keys(doc["summary"]),
        "rows": _row_kinds(rows),
    }
    path = GOLDEN / f"keys_{study}.json"
    text = json.dumps(shape, indent=1) + "\n"
    if os.environ.get("RECENGINE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden copy {path.name}: run with RECENGINE_UPDATE_GOLDEN=1"
    assert shape == json.loads(path.read_text()), f"`recengine {study}` JSON keys changed"
