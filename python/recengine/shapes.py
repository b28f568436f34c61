"""Embedding shapes of the eight DeepRecInfra models (DeepRecSys, ISCA 2020) as data.

Each model is a tuple of :class:`TableSpec` (rows, dim, lookups per sample), as in the public
DeepRecSys configs: all tables fp32 with a fixed pooling factor. The benchmark harness builds
tables from these; the model zoo and sharding reuse them.

Example::

    >>> from recengine.shapes import MODEL_SHAPES, model_tables
    >>> MODEL_SHAPES["rmc1"][0]
    TableSpec(num_rows=4000000, dim=32, lookups=80)
    >>> model_tables("rmc1", scale=0.01)[0]
    TableSpec(num_rows=40000, dim=32, lookups=80)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Optional

__all__ = [
    "MODEL_SHAPES",
    "TableSpec",
    "model_bytes",
    "model_names",
    "model_tables",
    "resolve_model",
]


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: ``num_rows`` rows of ``dim`` values, ``lookups`` rows pooled per
    sample (the fixed pooling factor).

    Example::

        >>> TableSpec(1000, 32, 80).nbytes()
        128000
    """

    num_rows: int
    dim: int
    lookups: int

    def __post_init__(self) -> None:
        for name in ("num_rows", "dim", "lookups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TableSpec.{name} must be a positive integer, got {value!r}")

    def nbytes(self, row_bytes: Optional[int] = None) -> int:
        """Bytes the table takes: ``num_rows * row_bytes`` (fp32 rows unless given)."""
        return self.num_rows * (4 * self.dim if row_bytes is None else row_bytes)


def _tables(count: int, num_rows: int, dim: int, lookups: int) -> tuple[TableSpec, ...]:
    return (TableSpec(num_rows, dim, lookups),) * count


_MT_WND_TABLES = _tables(41, 500_000, 32, 1) + _tables(2, 5_000_000, 32, 1)

#: The eight DeepRecInfra models, by short name, in the order of the DeepRecSys paper's table.
MODEL_SHAPES: dict[str, tuple[TableSpec, ...]] = {
    "rmc1": _tables(8, 4_000_000, 32, 80),
    "rmc2": _tables(32, 500_000, 64, 120),
    "rmc3": _tables(10, 2_000_000, 32, 20),
    "wnd": _tables(27, 1_000_000, 32, 1),
    "mtwnd": _MT_WND_TABLES,
    "ncf": (
        TableSpec(140_000, 64, 1),  # MF user
        TableSpec(140_000, 64, 1),  # MF item
        TableSpec(28_000, 64, 1),  # MLP user
        TableSpec(28_000, 64, 1),  # MLP item
    ),
    "din": (
        TableSpec(1_000_000, 32, 3),  # user profile
        TableSpec(100_000, 32, 3),  # behaviour
        TableSpec(10_000_000, 32, 3),  # ad
        TableSpec(10_000_000, 32, 3),  # context
    ),
    "dien": _MT_WND_TABLES,
}

# Spellings people use for the same model: "DLRM-RMC1", "MT-WnD", "Wide&Deep"...
_ALIASES = {"widedeep": "wnd", "widenddeep": "wnd", "mtwidedeep": "mtwnd"}


def model_names() -> list[str]:
    """The model short names, in the paper's order.

    Example::

        >>> model_names()[:3]
        ['rmc1', 'rmc2', 'rmc3']
    """
    return list(MODEL_SHAPES)


def resolve_model(model: str) -> str:
    """The short name of ``model``, accepting case and punctuation variants ("DLRM-RMC1",
    "MT-WnD").

    Raises:
        ValueError: an unknown model, listing the known ones.
    """
    if not isinstance(model, str):
        raise ValueError(f"a model name must be a string, got {model!r}")
    key = re.sub(r"[^a-z0-9]", "", model.lower())
    if key.startswith("dlrm") and key[4:] in MODEL_SHAPES:
        key = key[4:]
    key = _ALIASES.get(key, key)
    if key not in MODEL_SHAPES:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODEL_SHAPES)}")
    return key


def model_tables(model: str, scale: float = 1.0, min_rows: int = 1024) -> list[TableSpec]:
    """The tables of ``model`` with row counts multiplied by ``scale``.

    A scaled table keeps at least ``min_rows`` rows (or all of its rows, if it has fewer), so
    that tiny scales still give tables worth indexing. Dims and pooling factors are kept.

    Args:
        model: a name from :func:`model_names` (case and punctuation are ignored).
        scale: row-count factor, > 0. Values above 1 make larger tables.
        min_rows: floor of a scaled table's row count, >= 1.

    Raises:
        ValueError: an unknown model, or a non-positive scale or min_rows.

    Example::

        >>> [t.num_rows for t in model_tables("ncf", scale=0.01)]
        [1400, 1400, 1024, 1024]
    """
    name = resolve_model(model)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not isinstance(min_rows, int) or isinstance(min_rows, bool) or min_rows < 1:
        raise ValueError(f"min_rows must be a positive integer, got {min_rows!r}")
    out = []
    for spec in MODEL_SHAPES[name]:
        rows = max(round(spec.num_rows * scale), min(min_rows, spec.num_rows), 1)
        out.append(replace(spec, num_rows=int(rows)))
    return out


def model_bytes(model: str, scale: float = 1.0, min_rows: int = 1024) -> int:
    """Bytes the fp32 tables of ``model`` take at ``scale``.

    Example::

        >>> model_bytes("rmc1") // 2**20
        3906
    """
    return sum(t.nbytes() for t in model_tables(model, scale, min_rows))
