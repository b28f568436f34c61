"""Slow-path coercion of array arguments, called by the core when an input is not already a
C-contiguous int32/int64 (indices) or float32 (weights) numpy array."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_float32_array", "as_index_array"]


def as_index_array(obj: Any, name: str) -> np.ndarray:
    """Return ``obj`` as a C-contiguous int64 or int32 array, or raise TypeError.

    Lists, tuples, other integer dtypes and non-contiguous or misaligned arrays are copied.
    Floats, bools and objects are refused rather than silently truncated.

    Example:
        >>> as_index_array([1, 2], "indices").dtype
        dtype('int64')
    """
    if hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
        # torch tensors and other array libraries: go through numpy without copying when possible.
        obj = np.asarray(obj.detach().cpu() if hasattr(obj, "detach") else obj)
    arr = np.asarray(obj)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0 and arr.dtype == np.float64:
            # An empty list has no integer dtype; it is a valid empty index array.
            return np.zeros(arr.shape, dtype=np.int64)
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise IndexError(f"{name} holds a value larger than the largest int64")
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
