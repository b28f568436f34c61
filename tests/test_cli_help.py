"""Golden copies of every ``recengine <command> --help``: the command line's flags, defaults
and help text are part of the interface, and a refactor of ``cli.py`` must leave them as they
are. After an intended change, regenerate the copies with

    RECENGINE_UPDATE_GOLDEN=1 python -m pytest tests/test_cli_help.py

and review the diff of ``tests/golden/``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
from recengine.cli import _parser, main

GOLDEN = Path(__file__).parent / "golden"
COMMANDS = ["", "bench", "bench-models", "shard", "moe", "nmp", "serve", "hercules", "disagg",
            "privacy", "info"]


def _help(command: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # argparse wraps at the terminal's width: fix it, and the interpreter's spelling of the
    # options heading (Python 3.9 says "optional arguments").
    monkeypatch.setenv("COLUMNS", "100")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"] if command else ["--help"])
    assert done.value.code == 0
    return re.sub(r"^optional arguments:$", "options:", out.getvalue(), flags=re.M)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_unchanged(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help(command, monkeypatch)
    path = GOLDEN / f"help_{command or 'recengine'}.txt"
    if os.environ.get("RECENGINE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden copy {path.name}: run with RECENGINE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"`recengine {command} --help` changed"


def test_every_command_has_a_golden_copy() -> None:
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(sub.choices) == sorted(c for c in COMMANDS if c)
