"""How every study shows itself: progress on stderr (a bar on a terminal, timed lines with an
estimate of the time left when stderr is a file or a pipe), tables (rich where installed,
aligned text otherwise), JSON and the plot's common set-up."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Optional, TextIO

from . import Report, Table

__all__ = ["Progress", "check_writable", "figure", "fmt_ratio", "jsonable", "matplotlib_missing",
           "print_report", "rich", "save_figure", "write_json"]


def rich() -> Any:
    """The rich package, or None where it is not installed."""
    try:
        import rich
        import rich.console
        import rich.progress
        import rich.table
        import rich.text
    except ImportError:
        return None
    return rich


def fmt_ratio(v: Optional[float]) -> str:
    """``1.23x``, or ``-`` for a missing value."""
    return "-" if v is None else f"{v:.2f}x"


def jsonable(obj: Any) -> Any:
    """``obj`` with every non-finite float made None (JSON has no inf or nan)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: str, doc: Any) -> None:
    """Write ``doc`` to ``path`` as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(doc), f, indent=1, default=str)


def check_writable(path: Optional[str], option: str) -> None:
    """Refuse an output path that cannot be written, before a long run starts."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a folder")
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path}: not writable")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Progress of a run on ``stream`` (stderr): a transient rich bar on a terminal; elsewhere
    a line per status change, at most one every ``every_s`` seconds, with the steps done, the
    time spent and (once a step is done and the total is known) an estimate of the time left.

    Use as a context manager; ``status(msg)`` says what runs now, ``advance()`` marks a step.
    """

    def __init__(self, total: Optional[int], stream: Optional[TextIO] = None,
                 every_s: float = 5.0) -> None:
        stream = stream or sys.stderr
        self.total, self.done, self.stream, self.every_s = total, 0, stream, every_s
        self._start = time.perf_counter()
        self._last_line = -math.inf
        self._message = "starting"
        r = rich()
        console = r.console.Console(file=stream) if r is not None else None
        self._bar = None
        if console is not None and console.is_terminal:
            self._bar = r.progress.Progress(
                r.progress.SpinnerColumn(), r.progress.TextColumn("{task.description}"),
                r.progress.BarColumn(), r.progress.MofNCompleteColumn(),
                r.progress.TimeElapsedColumn(), r.progress.TimeRemainingColumn(),
                console=console, transient=True)
            self._task = self._bar.add_task("starting", total=total)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def status(self, message: str) -> None:
        self._message = message
        if self._bar is not None:
            self._bar.update(self._task, description=message)
        else:
            self._line()

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.advance(self._task)

    def _line(self) -> None:
        now = time.perf_counter()
        if now - self._last_line < self.every_s:
            return
        self._last_line = now
        spent = now - self._start
        count = f"[{self.done}/{self.total}] " if self.total else ""
        left = ""
        if self.total and 0 < self.done < self.total:
            left = f", about {_duration(spent * (self.total - self.done) / self.done)} left"
        print(f"{count}{self._message} ({_duration(spent)} in{left})", file=self.stream,
              flush=True)


def _plain_table(table: Table, out: TextIO) -> None:
    cells = [list(table.columns), *[list(r) for r in table.rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(table.columns))]
    if table.title:
        print(table.title, file=out)
    for n, row in enumerate(cells):
        if n - 1 in table.sections and n > 1:
            print(file=out)
        print("  ".join(v.ljust(w) if i < table.left else v.rjust(w)
                        for i, (v, w) in enumerate(zip(row, widths))).rstrip(), file=out)


def print_report(report: Report, out: Optional[TextIO] = None) -> None:
    """Print ``report``: its header lines, its tables (rich tables where rich is installed,
    as wide as they need when ``out`` is not a terminal), then its lines."""
    out = out or sys.stdout
    r = rich()
    console = None
    if r is not None:
        console = r.console.Console(file=out, highlight=False)
        if not console.is_terminal:
            console = r.console.Console(file=out, highlight=False, width=max(console.width, 160))
    for line in report.header:
        print(line, file=out)
    for table in report.tables:
        if console is None:
            _plain_table(table, out)
            continue
        t = r.table.Table(title=table.title or None, title_justify="left")
        for i, column in enumerate(table.columns):
            t.add_column(column, justify="left" if i < table.left else "right")
        for n, row in enumerate(table.rows):
            if n in table.sections and n > 0:
                t.add_section()
            t.add_row(*(r.text.Text(c) for c in row))
        out.flush()
        console.print(t)
    for line in report.lines:
        print(line, file=out)


def figure(panels: int = 1, *, columns: int = 1, size: tuple[float, float] = (6.4, 4.2)
           ) -> tuple[Any, Any]:
    """A matplotlib figure of ``panels`` axes (off-screen backend) and the axes as a flat
    list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows),
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def save_figure(fig: Any, path: str, title: Optional[str] = None, bottom: float = 0.0) -> None:
    """Lay out ``fig`` (leaving the ``bottom`` fraction free for a figure legend), give it
    ``title`` (the setting: machine, threads, model), save it to ``path`` and close it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def matplotlib_missing() -> bool:
    """Whether matplotlib is not installed."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is None
