"""Parsers of the studies' option values: each takes the typed text and returns the value or
raises ``ValueError`` saying what is allowed (the command line turns it into argparse's error,
which names the option)."""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

__all__ = ["comma_list", "core_count", "expand_all", "float_in", "int_in", "model",
           "model_or_all", "one_of", "positive_float", "positive_int", "seed"]


def comma_list(kind: Callable[[str], Any], name: str) -> Callable[[str], list[Any]]:
    """A comma-separated list of ``kind`` values (at least one)."""

    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise ValueError(f"empty {name} list")
        try:
            return [kind(t) for t in items]
        except ValueError as exc:
            raise ValueError(f"bad {name} list {text!r}: {exc}") from None

    return parse


def model(text: str) -> str:
    """A DeepRecInfra model name (case and dashes as the user likes)."""
    from ..shapes import resolve_model
    return resolve_model(text)


def model_or_all(text: str) -> str:
    """A model name, or ``all``."""
    return "all" if text.strip().lower() == "all" else model(text)


def expand_all(models: Any) -> Any:
    """A parsed ``model_or_all`` list with every ``all`` replaced by the eight models (None
    for an empty or missing list: the config's default)."""
    from ..shapes import model_names

    out: list[str] = []
    for m in models or []:
        out += model_names() if m == "all" else [m]
    return out or None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value


def core_count(text: str) -> int:
    """A core count the simulator models (1 to 1024)."""
    value = positive_int(text)
    if value > 1024:
        raise ValueError(f"{value} is more than the 1024 cores the simulator models")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text} is not a positive number")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is not in [{low}, {high}]")
        return value

    return parse


def float_in(low: float, high: float) -> Callable[[str], float]:
    """A finite number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{text} is not a finite number in [{low:g}, {high:g}]")
        return value

    return parse


#: Seeds: any non-negative 63-bit integer.
seed = int_in(0, 2**63 - 1)


def one_of(module: str, names: str, normalize: Callable[[str], str] = str) -> Callable[[str], str]:
    """One of the names ``recengine.<module>.<names>`` lists (imported when a value is parsed,
    so that the command line starts without the study's modules); ``normalize`` is applied to
    the text first."""

    def check(text: str) -> str:
        allowed = getattr(importlib.import_module(f"recengine.{module}"), names)
        value = normalize(text)
        if value not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return value

    return check
