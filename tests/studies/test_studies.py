"""The study protocol (``recengine.studies``): every registered study runs at its quick
preset through the protocol alone (configure, rows, summary, report, plot, config), and the
command line built from the registry checks its options and outputs before any work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from recengine import studies
from recengine.cli import main


@pytest.mark.parametrize("name", studies.names())
def test_every_study_runs_at_its_quick_preset(name: str, tmp_path: Path) -> None:
    study = studies.get(name)
    if study.missing():
        pytest.skip(study.missing())
    notes: list[str] = []
    config = study.configure(dict(study.quick), notes.append)
    assert isinstance(config, study.config_class())
    statuses: list[str] = []
    ticks: list[int] = []
    rows = list(study.rows(config, status=statuses.append, tick=lambda: ticks.append(1)))
    assert rows and all(isinstance(r, dict) for r in rows)
    assert statuses, "a study says what it is doing"
    total = study.total(config)
    if study.ticks():
        assert ticks and total is not None and len(ticks) <= total
    summary = study.summarize(rows, config)
    report = study.report(rows, summary, config)
    assert report.tables and all(t.rows for t in report.tables)
    for table in report.tables:
        assert all(len(r) == len(table.columns) for r in table.rows)
    json.dumps({"rows": rows, "summary": summary, "config": study.config_dict(config),
                **study.out_extra(config)}, default=str)
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    study.plot(rows, str(png), config)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", studies.names())
def test_every_option_sets_a_config_field(name: str) -> None:
    """An option's value reaches the config: its key is a field, or the study's configure
    consumes it (given here with a value, it must not be refused as an unknown keyword)."""
    import dataclasses

    study = studies.get(name)
    if study.missing():
        pytest.skip(study.missing())
    fields = {f.name for f in dataclasses.fields(study.config_class())}
    consumed = {o.key for o in study.options} - fields
    assert consumed <= {"quick", "no_probe", "plans", "preset", "sizes", "size_percentiles"}, \
        f"{name}: options that set no config field: {sorted(consumed)}"


def test_the_registry_names_every_command() -> None:
    assert studies.names() == ["bench", "bench-models", "shard", "moe", "nmp", "serve",
                               "hercules", "disagg", "privacy"]
    with pytest.raises(ValueError, match=r"unknown study 'nope'.*bench"):
        studies.get("nope")


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_output_paths_are_checked_before_the_run(option: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    path = tmp_path / "no such folder" / "x.json"
    assert main(["nmp", option, str(path)]) == 1
    assert time.perf_counter() - start < 5
    assert "does not exist" in capsys.readouterr().err
    assert main(["nmp", option, str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, names", [
    (["shard", "--model", "rmc9"], "rmc1, rmc2"),
    (["bench", "--dtypes", "fp8"], "fp32, int8"),
    (["moe", "--policies", "random"], "inactive_lifo"),
    (["nmp", "--sweeps", "voltage"], "ranks, cache"),
])
def test_a_bad_value_names_the_valid_ones(argv: list[str], names: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert names in err and f"argument {argv[1]}" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import recengine

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"recengine {recengine.__version__}"


def test_a_missing_dependency_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # ``import torch`` fails
    assert main(["moe"]) == 1
    err = capsys.readouterr().err
    assert "needs torch" in err and "pip install" in err and "Traceback" not in err


def test_progress_shows_when_stderr_is_not_a_terminal() -> None:
    import io

    from recengine.studies._output import Progress

    stream = io.StringIO()
    with Progress(4, stream=stream, every_s=0.0) as progress:
        for step in range(4):
            progress.status(f"step {step}")
            progress.advance()
    lines: Any = stream.getvalue().splitlines()
    assert lines[0].startswith("[0/4] step 0")
    assert "left" in lines[1] and lines[-1].startswith("[3/4] step 3")
