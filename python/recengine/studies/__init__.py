"""What a study is, and the registry of recengine's studies.

A study is an experiment run as ``recengine <name>``: a config dataclass with defaults, an
iterator of result rows (dicts of JSON values) with progress, a summary of the rows, a table
for a person and a plot. Each study subclasses :class:`Study` in a module of this package that
imports nothing heavy (torch, Ray), so that ``recengine --help`` starts at once and a study
whose dependencies are missing says how to install them; the measuring code lives with the
system it studies (:mod:`recengine.bench`, :mod:`recengine.shard.study`, ...).

The command line is built from the registry (:mod:`recengine.cli`): every :class:`Option` of a
study becomes one argparse option, and ``--json``, ``--out`` and ``--plot`` are added to each.

Example::

    >>> from recengine import studies
    >>> studies.names()
    ['bench', 'bench-models', 'shard', 'moe', 'nmp', 'serve', 'hercules', 'disagg', 'privacy']
    >>> study = studies.get("nmp")
    >>> config = study.configure(dict(study.quick))
    >>> rows = list(study.rows(config, status=lambda _m: None, tick=lambda: None))
    >>> sorted(study.summarize(rows, config))
    ['best', 'best_latency_speedup']
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional, Sequence

__all__ = ["Option", "Report", "Study", "Table", "get", "names", "register"]


@dataclass(frozen=True)
class Option:
    """One command-line option of a study.

    Args:
        flag: the option as typed, e.g. ``"--table-mb"``.
        help: its help text.
        dest: the config keyword it sets; by default the flag's name with underscores. Values
            the study's :meth:`Study.configure` reads itself need no config field.
        parse: turns the typed text into the value; a ``ValueError`` it raises becomes
            argparse's error, naming the option.
        choices: the values allowed, shown in the help.
        metavar: the value's name in the help.
        switch: an option without a value (True when given).
        default: the value when the option is not given; None leaves the config's default.
    """

    flag: str
    help: str
    dest: Optional[str] = None
    parse: Optional[Callable[[str], Any]] = None
    choices: Optional[Sequence[str]] = None
    metavar: Optional[str] = None
    switch: bool = False
    default: Any = None

    @property
    def key(self) -> str:
        """The config keyword this option sets."""
        return self.dest or self.flag.lstrip("-").replace("-", "_")


@dataclass
class Table:
    """A table for a person: a title, column headers, rows of formatted cells.

    ``left`` columns from the first are names (left-aligned); ``sections`` lists the row
    indices that start a new group (a rule above them).
    """

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    left: int = 1
    sections: Sequence[int] = ()


@dataclass
class Report:
    """What a study prints: lines before its tables, the tables, lines after them."""

    header: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


class Study:
    """The protocol every study follows; subclass it and :func:`register` an instance.

    Class attributes: ``name`` (the command), ``help`` (one line), ``description``,
    ``options`` (its :class:`Option` s in the order ``--help`` lists them), ``quick`` (config
    keywords of a run of seconds: what ``--quick`` runs where the study has that flag, and what
    the test suite runs), ``needs`` (modules it cannot run without, with the pip command that
    installs them), the help of its ``--json``/``--out``/``--plot`` options, and ``runner``:
    the module that measures, imported on use, whose ``Config`` dataclass, ``iter_study(config,
    status[, tick])``, ``summarize_study(rows)``, ``plot_study(rows, path, config)`` and
    ``config_dict(config)`` the default methods call. A study overrides what differs.
    """

    name: str = ""
    help: str = ""
    description: str = ""
    options: tuple[Option, ...] = ()
    quick: ClassVar[Mapping[str, Any]] = {}
    needs: ClassVar[Mapping[str, str]] = {}
    json_help: str = "print only a JSON list of row objects to stdout"
    out_help: str = "also write {rows, summary, config} as JSON"
    plot_help: str = "save a chart of the results"
    #: What ``--json`` prints: "rows" (the list) or "doc" ({rows, summary}).
    json_prints: str = "rows"
    #: The module that measures (see above).
    runner: str = ""

    def _runner(self) -> Any:
        return importlib.import_module(self.runner)

    def config_class(self) -> type:
        """The study's config dataclass (imported on use): the runner's ``Config``."""
        return self._runner().Config

    def configure(self, values: dict[str, Any], note: Callable[[str], None] = print) -> Any:
        """The config of the options' ``values`` (None: the config's default), under the
        ``quick`` preset when ``values["quick"]`` is set; ``note`` takes advice for the user."""
        values = dict(values)
        if values.pop("quick", False):
            for key, value in self.quick.items():
                if values.get(key) is None:
                    values[key] = value
        return self.config_class()(**{k: v for k, v in values.items() if v is not None})

    def missing(self) -> Optional[str]:
        """Why the study cannot run here (a module it needs is not installed), or None."""
        for module, install in self.needs.items():
            if (sys.modules[module] is None if module in sys.modules
                    else importlib.util.find_spec(module) is None):
                return (f"recengine {self.name} needs {module}, which is not installed "
                        f"({install})")
        return None

    def before(self, config: Any, note: Callable[[str], None]) -> None:
        """Say what is about to run, and warn of what will make it noisy (default: nothing)."""

    def total(self, config: Any) -> Optional[int]:
        """How many progress ticks a run makes, where known."""
        return None

    def ticks(self) -> bool:
        """Whether progress advances on the study's ``tick`` calls (else on status lines)."""
        return False

    def rows(self, config: Any, status: Callable[[str], None],
             tick: Callable[[], None]) -> Iterator[dict[str, Any]]:
        """The result rows, one at a time; ``status`` takes what is running now, ``tick``
        marks a step done (for a study whose progress :meth:`ticks`)."""
        run = self._runner().iter_study
        return run(config, status=status, tick=tick) if self.ticks() else run(config, status=status)

    def summarize(self, rows: Sequence[dict[str, Any]], config: Any) -> Any:
        """The figures that answer the study's question (JSON values)."""
        return self._runner().summarize_study(rows)

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        """The tables and lines printed for a person."""
        raise NotImplementedError

    def plot(self, rows: Sequence[dict[str, Any]], path: str, config: Any) -> None:
        """Save the study's chart to ``path`` (needs matplotlib)."""
        self._runner().plot_study(rows, path, config)

    def config_dict(self, config: Any) -> dict[str, Any]:
        """The config as JSON values, for ``--out``."""
        return dict(self._runner().config_dict(config))

    def out_extra(self, config: Any) -> dict[str, Any]:
        """More keys for the ``--out`` document (default: none)."""
        return {}


#: The built-in studies in the order ``recengine --help`` lists them: name -> module of this
#: package holding its :class:`Study` as ``STUDY``.
_BUILTIN = {"bench": "bench", "bench-models": "models", "shard": "shard", "moe": "moe",
            "nmp": "nmp", "serve": "serve", "hercules": "hercules", "disagg": "disagg",
            "privacy": "privacy"}
_REGISTERED: dict[str, Study] = {}


def register(study: Study) -> Study:
    """Add ``study`` to the registry (the command line picks it up); returns it."""
    if not study.name:
        raise ValueError("a study needs a name")
    _REGISTERED[study.name] = study
    return study


def names() -> list[str]:
    """Every registered study's name, built-ins first."""
    return [*_BUILTIN, *(n for n in _REGISTERED if n not in _BUILTIN)]


def get(name: str) -> Study:
    """The study called ``name``."""
    if name not in _REGISTERED:
        if name not in _BUILTIN:
            raise ValueError(f"unknown study {name!r}; the studies are {', '.join(names())}")
        module = importlib.import_module(f"{__name__}.{_BUILTIN[name]}")
        register(module.STUDY)
    return _REGISTERED[name]
