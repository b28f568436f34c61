"""Names of the table storage dtypes and their aliases."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from . import _core

__all__ = ["STORAGE_DTYPES", "normalize_dtype", "row_bytes"]

#: Canonical names of the storage formats, in the order of the core's enum.
STORAGE_DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")

_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "f32": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "f16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "int8": "int8",
    "uint8": "int8",
    "8bit": "int8",
    "int4": "int4",
    "4bit": "int4",
}


def normalize_dtype(dtype: Any) -> str:
    """Return the canonical storage dtype name for ``dtype``.

    Accepts the canonical names, common aliases (``"float16"``, ``"bfloat16"`` ...), numpy
    dtypes and scalar types (``np.float32``), and torch dtypes by their names.

    Example:
        >>> normalize_dtype(np.float16)
        'fp16'
    """
    if isinstance(dtype, str):
        key = dtype.lower()
    elif isinstance(dtype, (np.dtype, type)):
        try:
            key = np.dtype(dtype).name
        except TypeError:
            key = str(dtype)
    else:
        key = str(dtype).lower().replace("torch.", "")
    try:
        return _ALIASES[key]
    except KeyError:
        raise TypeError(
            f"unsupported table dtype {dtype!r}; expected one of {', '.join(STORAGE_DTYPES)}"
        ) from None


def row_bytes(dtype: str, dim: int) -> int:
    """Bytes one row of ``dim`` values takes in storage format ``dtype``.

    int8 rows are ``dim`` bytes then an fp32 scale and fp32 bias; int4 rows are ``ceil(dim/2)``
    bytes (even columns in the low nibble) then an fp16 scale and fp16 bias.

    Example:
        >>> row_bytes("int8", 32)
        40
    """
    return int(_core.row_bytes(normalize_dtype(dtype), operator.index(dim)))
