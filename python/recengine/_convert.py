"""Slow-path coercion of array arguments, called by the core when an input is not already a
C-contiguous int32/int64 (indices) or float32 (weights) numpy array."""

from __future__ import annotations

import operator
from typing import Any, Optional

import numpy as np

__all__ = ["I64", "as_float32_array", "as_index_array", "as_int", "as_padding_idx"]

#: The range of the core's signed 64-bit integers.
I64 = (-(2**63), 2**63 - 1)


def as_index_array(obj: Any, name: str) -> np.ndarray:
    """Return ``obj`` as a C-contiguous int64 or int32 array, or raise TypeError.

    Lists, tuples, other integer dtypes and non-contiguous or misaligned arrays are copied.
    Floats, bools, datetimes, timedeltas and objects are refused rather than silently
    truncated or reinterpreted.

    Example:
        >>> as_index_array([1, 2], "indices").dtype
        dtype('int64')
    """
    if hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
        # torch tensors and other array libraries: go through numpy without copying when possible.
        obj = np.asarray(obj.detach().cpu() if hasattr(obj, "detach") else obj)
    arr = np.asarray(obj)
    if arr.dtype.kind not in "iu":  # (timedelta64 counts as an integer dtype to numpy)
        if arr.size == 0 and arr.dtype == np.float64:
            # An empty list has no integer dtype; it is a valid empty index array.
            return np.zeros(arr.shape, dtype=np.int64)
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        # An index that large is out of range of any table; an offset or length that large
        # is a bad bag description.
        exc = IndexError if name == "indices" else ValueError
        raise exc(f"{name} holds {int(arr.max())}, larger than the largest int64")
    if arr.dtype not in (np.int32, np.int64):
        arr = arr.astype(np.int64)
    # "A": aligned too (a view at an odd byte offset is copied, as the core reads it in place).
    return np.require(arr, requirements="CA")


def as_float32_array(obj: Any, name: str) -> np.ndarray:
    """Return ``obj`` as a C-contiguous float32 array, or raise TypeError.

    Example:
        >>> as_float32_array([1, 2], "weights").dtype
        dtype('float32')
    """
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().float().numpy()
    arr = np.asarray(obj)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    return np.require(arr, dtype=np.float32, requirements="CA")


def as_int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an ``int`` in ``[low, high]``.

    Raises:
        TypeError: not an integer (a bool, a float, a string ...).
        ValueError: outside ``[low, high]`` (where the core's conversion would raise
            ``OverflowError``).

    Example:
        >>> as_int(np.int32(7), "seed", 0, 2**64 - 1)
        7
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        kind = type(value).__name__
        raise TypeError(f"{name} must be an integer, got {kind} {value!r}") from None
    if not low <= v <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {v}")
    return v


def as_padding_idx(padding_idx: Any) -> Optional[int]:
    """``padding_idx`` checked as a 64-bit row id (the core checks it against the table)."""
    return None if padding_idx is None else as_int(padding_idx, "padding_idx", *I64)
