"""The ``recengine`` command line, built from the study registry (:mod:`recengine.studies`).

Every study is a command: its options come from the study's :class:`~recengine.studies.Option`
list, and each gets ``--json`` (rows to stdout, progress and messages to stderr), ``--out``
(``{rows, summary, config, wall_s}`` as JSON) and ``--plot``. ``recengine info`` shows the
build.

Example::

    $ recengine bench --models rmc1,wnd --batches 64,1024 --dtypes fp32
    $ recengine bench --quick --json > rows.json
    $ recengine serve --simulate --cores 16,40 --model all --out serve.json --plot serve.png
    $ python -m recengine info
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

from . import __version__, studies
from .studies import _output as output

__all__ = ["main"]


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its ValueError becomes the option's error message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _add_study(sub: Any, study: studies.Study) -> None:
    p = sub.add_parser(study.name, help=study.help, description=study.description)
    for o in study.options:
        if o.switch:
            p.add_argument(o.flag, dest=o.key, action="store_true", help=o.help)
            continue
        kwargs: dict[str, Any] = {"dest": o.key, "default": o.default, "help": o.help}
        if o.parse is not None:
            kwargs["type"] = _argtype(o.parse)
        if o.choices is not None:
            kwargs["choices"] = o.choices
        if o.metavar is not None or o.choices is None:  # named after the flag, not the field
            kwargs["metavar"] = o.metavar or o.flag.lstrip("-").upper().replace("-", "_")
        p.add_argument(o.flag, **kwargs)
    p.add_argument("--json", action="store_true", help=study.json_help)
    p.add_argument("--out", metavar="FILE", default=None, help=study.out_help)
    p.add_argument("--plot", metavar="FILE.png", default=None, help=study.plot_help)
    p.set_defaults(study=study)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recengine",
        description="recengine: Rust-accelerated embedding pooling for recommendation models.",
    )
    parser.add_argument("--version", action="version", version=f"recengine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in studies.names():
        _add_study(sub, studies.get(name))
    info = sub.add_parser("info", help="show how this build of recengine was made")
    info.add_argument("--json", action="store_true", help="print the build info as JSON")
    info.set_defaults(study=None)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``recengine`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _run(args.study, args) if args.study is not None else _info(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"recengine {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(study: studies.Study, args: argparse.Namespace) -> int:
    """Run one study as the options say: configure, check the outputs, run with progress,
    summarize, print and write."""
    missing = study.missing()
    if missing:
        raise ValueError(missing)
    output.check_writable(args.out, "--out")
    output.check_writable(args.plot, "--plot")
    values = {o.key: getattr(args, o.key) for o in study.options}
    config = study.configure(values, _note)
    plot = args.plot
    if plot and output.matplotlib_missing():
        _note(f"--plot {plot}: matplotlib is not installed (pip install matplotlib); the "
              "study runs without the chart.")
        plot = None
    study.before(config, _note)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # told once, after the progress bar
        warnings.simplefilter("always", RuntimeWarning)
        with output.Progress(study.total(config)) as progress:
            ticks = study.ticks()
            status = progress.status if ticks else _stepper(progress)
            rows = output.jsonable(list(study.rows(
                config, status=status, tick=progress.advance if ticks else _nothing)))
    for w in dict.fromkeys(str(w.message) for w in caught):
        _note(f"warning: {w}")
    wall = time.perf_counter() - start
    summary = output.jsonable(study.summarize(rows, config))
    if args.json:
        doc = rows if study.json_prints == "rows" else {"rows": rows, "summary": summary}
        print(json.dumps(doc, indent=1))
    else:
        output.print_report(study.report(rows, summary, config))
    _note(f"wall time {wall:.1f} s")
    if args.out:
        output.write_json(args.out, {"rows": rows, "summary": summary,
                                     "config": study.config_dict(config),
                                     **study.out_extra(config), "wall_s": wall})
        _note(f"wrote {args.out}")
    if plot:
        study.plot(rows, plot, config)
        _note(f"wrote {plot}")
    return 0


def _nothing() -> None:
    pass


def _stepper(progress: output.Progress) -> Callable[[str], None]:
    """A status callback that also counts each status line as a step."""

    def status(message: str) -> None:
        progress.advance()
        progress.status(message)

    return status


def _info(args: argparse.Namespace) -> int:
    import recengine

    info = recengine.build_info()
    if args.json:
        print(json.dumps(output.jsonable(info), indent=1, default=str))
        return 0
    rows = [[str(key), str(value)] for key, value in info.items()]
    output.print_report(studies.Report(tables=[studies.Table(
        f"recengine {recengine.__version__}", ["key", "value"], rows, left=2)]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
