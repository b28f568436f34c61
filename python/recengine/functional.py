"""Function forms of the pooling kernels on plain numpy arrays.

The numpy layer's functions; ``recengine.nn.functional`` holds their torch forms (torch's
signatures and autograd), as ``torch.nn.functional`` does for torch.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _access, _core
from ._access import RECORDERS as _RECORDING
from ._convert import I64, as_int, as_padding_idx

__all__ = ["embedding_bag", "embedding_bag_backward", "sparse_lengths_sum"]


def sparse_lengths_sum(
    table: Any,
    indices: Any,
    lengths: Any,
    weights: Any = None,
    mode: str = "sum",
    padding_idx: Optional[int] = None,
) -> np.ndarray:
    """Caffe2's SparseLengthsSum on a plain 2-D numpy array, read in place (no copy).

    ``out[b] = reduce_{j in bag b} w_j * table[indices[j]]`` with bag b holding the next
    ``lengths[b]`` indices.

    Args:
        table: ``[num_rows, dim]`` float32 or float16 array (other float dtypes are converted
            to float32 first, which copies; so are non-contiguous arrays).
        indices: ``[L]`` int32/int64 row ids.
        lengths: ``[B]`` bag sizes summing to L.
        weights: optional ``[L]`` per-lookup weights (SparseLengthsWeightedSum; sum only).
        mode: "sum", "mean" (SparseLengthsMean) or "max".
        padding_idx: a row id to skip.

    Returns:
        ``[B, dim]`` float32.

    Example::

        >>> table = np.arange(6, dtype=np.float32).reshape(3, 2)
        >>> sparse_lengths_sum(table, np.array([0, 2, 1]), np.array([2, 1]))
        array([[4., 6.],
               [2., 3.]], dtype=float32)
    """
    out = _core.pool_array(_as_table_array(table), indices, None, lengths, weights, mode,
                           as_padding_idx(padding_idx), False)
    if _RECORDING:  # the hook: one test while nobody records
        _access.note(table, indices, None, lengths)
    return out


def embedding_bag(
    table: Any,
    indices: Any,
    offsets: Any = None,
    weights: Any = None,
    mode: str = "sum",
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
) -> np.ndarray:
    """torch-style EmbeddingBag pooling (bags given by ``offsets``) on a plain numpy array.

    Same as :func:`sparse_lengths_sum` with torch's bag description: ``offsets[b]`` is where
    bag b starts; 2-D ``indices`` ``[B, n]`` are B bags of n and need no offsets.

    Example::

        >>> embedding_bag(np.eye(3, dtype=np.float32), np.array([0, 1, 2]), np.array([0, 1]))
        array([[1., 0., 0.],
               [0., 1., 1.]], dtype=float32)
    """
    out = _core.pool_array(_as_table_array(table), indices, offsets, None, weights, mode,
                           as_padding_idx(padding_idx), include_last_offset)
    if _RECORDING:  # the hook: one test while nobody records
        _access.note(table, indices, offsets, None, include_last_offset)
    return out


def embedding_bag_backward(
    grad: Any,
    num_rows: int,
    indices: Any,
    offsets: Any = None,
    weights: Any = None,
    mode: str = "sum",
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
    sparse: bool = False,
) -> Any:
    """The table's gradient of :func:`embedding_bag` (sum or mean mode), summed on the core's
    threads: each lookup ``j`` of bag ``b`` adds ``weights[j] * grad[b]`` to its row (divided
    by the bag's non-padding count in mean mode; padding lookups add nothing).

    Args:
        grad: ``[B, D]`` float32 gradient of the pooled output.
        num_rows: N, the table's row count.
        indices, offsets, weights, padding_idx, include_last_offset: as in
            :func:`embedding_bag`.
        mode: "sum" or "mean".
        sparse: return the gradient per lookup instead of per row.

    Returns:
        ``[N, D]`` float32; or with ``sparse``, ``(rows, values)``: each non-padding lookup's
        row (int64 ``[K]``) and its scaled output gradient (float32 ``[K, D]``), in lookup
        order (torch's uncoalesced sparse gradient; rows repeat, and summing the values of
        equal rows gives the dense gradient's rows).

    Example::

        >>> g = np.ones((1, 2), dtype=np.float32)
        >>> embedding_bag_backward(g, 3, np.array([2, 0, 2]), np.array([0]))
        array([[1., 1.],
               [0., 0.],
               [2., 2.]], dtype=float32)
    """
    if not isinstance(num_rows, (int, np.integer)) or num_rows < 0:
        raise ValueError(f"num_rows must be a non-negative integer, got {num_rows!r}")
    g = np.ascontiguousarray(grad, dtype=np.float32)
    if not g.flags.aligned:  # a view at an odd byte offset: the core needs an aligned copy
        g = g.copy()
    if g.ndim != 2:
        raise ValueError(f"grad must be 2-D [B, D], got shape {g.shape}")
    args = (g, as_int(num_rows, "num_rows", 0, I64[1]), indices, offsets, None, weights, mode,
            as_padding_idx(padding_idx), include_last_offset)
    if sparse:
        return _core.pool_backward(*args)
    out = np.zeros((num_rows, g.shape[1]), dtype=np.float32)
    _core.pool_backward(*args, out=out)
    return out


def _as_table_array(table: Any) -> np.ndarray:
    if isinstance(table, np.ndarray) and table.dtype in (np.float32, np.float16) \
            and table.flags.c_contiguous:
        return table
    arr = np.asarray(table)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"the table must hold floats, got dtype {arr.dtype}")
    if arr.dtype != np.float16:
        arr = arr.astype(np.float32, copy=False)
    return np.ascontiguousarray(arr)
