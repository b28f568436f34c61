"""Hypothesis strategies for hostile array arguments: every dtype numpy has (and objects,
dates, strings), shapes from 0-d to 3-d with empty sides, and layouts the core must not
trust: Fortran order, strides, reversed views, views at an odd byte offset, read-only
arrays, and values at the edges of their dtype (extremes, NaN, infinities).

``tests/test_fuzz.py`` feeds them to every public entry point of the numpy API and
``recengine.nn``; a property there is that the call either answers as the numpy reference
(or torch) does, or raises one of the documented exceptions (:data:`ALLOWED`): never a
``PanicException``, a ``SystemError``, a crash or a hang.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "ALLOWED",
    "HOSTILE_DTYPES",
    "INT_DTYPES",
    "LAYOUTS",
    "hostile_arrays",
    "index_arrays",
    "lay_out",
]

#: The exceptions a public entry point may raise for bad input.
ALLOWED = (TypeError, ValueError, IndexError, MemoryError)

INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
#: Dtypes an argument may arrive in, the plausible and the absurd.
HOSTILE_DTYPES = (*INT_DTYPES, "float16", "float32", "float64", "bool", "complex64",
                  "timedelta64[s]", "datetime64[s]", "U2", "object")
#: How an array may be laid out in memory.
LAYOUTS = ("c", "fortran", "strided", "reversed", "misaligned", "readonly")


def lay_out(arr: np.ndarray, layout: str) -> np.ndarray:
    """``arr``'s values in the memory layout ``layout`` (one of :data:`LAYOUTS`)."""
    if layout == "fortran":
        return np.asfortranarray(arr)
    if layout == "strided" and arr.ndim:
        wide = np.repeat(arr, 2, axis=-1)
        return wide[..., ::2]
    if layout == "reversed" and arr.ndim:
        return np.ascontiguousarray(arr[::-1])[::-1]
    if layout == "misaligned" and arr.dtype != object and arr.dtype.itemsize > 1:
        buf = np.zeros(arr.nbytes + 1, np.uint8)
        view = buf[1:].view(arr.dtype).reshape(arr.shape)
        view[...] = arr
        return view
    if layout == "readonly":
        out = arr.copy()
        out.setflags(write=False)
        return out
    return arr


def _elements(dtype: np.dtype, low: Optional[int], high: Optional[int]) -> st.SearchStrategy:
    if dtype.kind in "iu" and low is not None and high is not None:
        info = np.iinfo(dtype)
        plausible = st.integers(max(low, int(info.min)), min(high, int(info.max)))
        extreme = st.sampled_from([int(info.min), int(info.max), 0])
        return st.one_of(plausible, plausible, plausible, extreme)
    if dtype.hasobject:
        return st.one_of(st.integers(-3, 12), st.none(), st.text(max_size=2))
    if dtype.kind == "f":
        return hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True)
    return hnp.from_dtype(dtype)


@st.composite
def hostile_arrays(draw: Any, dtypes: Sequence[str] = HOSTILE_DTYPES, min_dims: int = 0,
                   max_dims: int = 3, max_side: int = 6, low: Optional[int] = None,
                   high: Optional[int] = None) -> np.ndarray:
    """An array of a dtype of ``dtypes``, any shape up to ``max_dims`` dims of ``max_side``,
    any layout; integers mostly in ``[low, high]`` when given (with the dtype's extremes)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0,
                                  max_side=max_side))
    arr = draw(hnp.arrays(dtype, shape, elements=_elements(dtype, low, high)))
    return lay_out(arr, draw(st.sampled_from(LAYOUTS)))


def index_arrays(num_rows: int, dims: tuple[int, int] = (1, 1), max_side: int = 12
                 ) -> st.SearchStrategy:
    """Index-like arguments: mostly integer arrays of rows near ``[0, num_rows)`` in any
    layout, sometimes any hostile array, a list, or None."""
    plausible = hostile_arrays(INT_DTYPES, min_dims=dims[0], max_dims=dims[1],
                               max_side=max_side, low=-2, high=num_rows + 1)
    return st.one_of(plausible, plausible, plausible, plausible,
                     hostile_arrays(max_side=max_side),
                     st.lists(st.integers(-2, num_rows + 1), max_size=max_side))
