"""The examples in the package's docstrings run and print what they say (in a child
process, since some change process-wide settings such as the core's thread count)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import recengine


def test_docstring_examples_run() -> None:
    package = Path(recengine.__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--doctest-modules", "-p", "no:cacheprovider",
         "--benchmark-disable", str(package)],
        capture_output=True, text=True, timeout=600, cwd=package.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
