"""Every Python block of the README runs as written, each in a fresh namespace (a reader
copies one block at a time)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = BLOCKS[index]
    if "torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})
