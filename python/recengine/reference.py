"""Plain numpy reference implementations of recengine's kernels and storage formats.

These are slow and written to be obviously correct: the test suite checks the Rust core
against them, and users can use them to check their own data. They depend on numpy only (not
on the compiled core).

Example::

    >>> import numpy as np
    >>> from recengine.reference import pool_reference
    >>> table = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> pool_reference(table, np.array([0, 2, 1]), lengths=np.array([2, 1]))
    array([[4., 6.],
           [2., 3.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = [
    "bag_bounds_reference",
    "dequantize_rowwise_reference",
    "pool_backward_reference",
    "pool_reference",
    "quantize_rowwise_reference",
    "rowwise_error_bound_reference",
    "rowwise_row_bytes",
    "to_bf16_reference",
]

_MODES = ("sum", "mean", "max")


def _as_int_array(obj: Any, name: str) -> np.ndarray:
    arr = np.asarray(obj)
    if arr.size == 0 and arr.dtype.kind == "f":
        return arr.astype(np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def bag_bounds_reference(
    num_indices: int,
    offsets: Any = None,
    lengths: Any = None,
    include_last_offset: bool = False,
) -> list[tuple[int, int]]:
    """The ``[start, end)`` range of each bag in a flat index array of ``num_indices``.

    Args:
        num_indices: L, the length of the 1-D index array.
        offsets: ``[B]`` (or ``[B + 1]`` with ``include_last_offset``) bag starts, torch style.
        lengths: ``[B]`` bag sizes, Caffe2 style. Exactly one of offsets/lengths is given.
        include_last_offset: whether ``offsets`` ends with ``num_indices``.

    Returns:
        A list of B ``(start, end)`` pairs.

    Raises:
        ValueError: offsets/lengths inconsistent with ``num_indices``.

    Example::

        >>> bag_bounds_reference(5, offsets=np.array([0, 2, 2]))
        [(0, 2), (2, 2), (2, 5)]
    """
    if (offsets is None) == (lengths is None):
        raise ValueError("give exactly one of offsets and lengths with 1-D indices")
    if lengths is not None:
        ln = _as_int_array(lengths, "lengths")
        if ln.ndim != 1:
            raise ValueError("lengths must be 1-D")
        if (ln < 0).any():
            raise ValueError("lengths must not be negative")
        if int(ln.sum()) != num_indices:
            raise ValueError(f"lengths sum to {int(ln.sum())}, not to {num_indices} indices")
        ends = np.cumsum(ln)
        starts = ends - ln
        return [(int(s), int(e)) for s, e in zip(starts, ends)]
    off = _as_int_array(offsets, "offsets")
    if off.ndim != 1:
        raise ValueError("offsets must be 1-D")
    if include_last_offset:
        if off.size == 0:
            raise ValueError("include_last_offset needs at least one offset")
        if int(off[-1]) != num_indices:
            raise ValueError(f"the last offset {int(off[-1])} is not len(indices) {num_indices}")
        bounds = list(off)
    else:
        bounds = [*list(off), num_indices]
    if off.size and int(off[0]) != 0:
        raise ValueError(f"offsets[0] must be 0, got {int(off[0])}")
    if any(int(b) > int(a_next) for b, a_next in zip(bounds[:-1], bounds[1:])):
        raise ValueError("offsets must not decrease")
    if any(int(b) > num_indices for b in bounds):
        raise ValueError(f"an offset is past the end of {num_indices} indices")
    return [(int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:])]


def pool_reference(
    table_f32: Any,
    indices: Any,
    offsets: Any = None,
    lengths: Any = None,
    weights: Any = None,
    mode: str = "sum",
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
) -> np.ndarray:
    """Pool rows of ``table_f32`` into bags, one bag at a time, in float64.

    ``out[b] = reduce_{j in bag b, indices[j] != padding_idx} w_j * table[indices[j]]`` with
    reduce one of sum, mean (sum divided by the number of non-padding rows) or max
    (elementwise, by torch's rule: the bag's first row, then each value greater than the one
    held; so a NaN in the first row stays, one in a later row is passed over). Empty bags,
    and bags holding only ``padding_idx``, give zeros.

    Args:
        table_f32: ``[N, D]`` float array (read as float64).
        indices: 1-D ``[L]`` integer row ids with ``offsets`` or ``lengths``, or 2-D ``[B, n]``
            (B bags of n each, no offsets nor lengths).
        offsets: torch-style bag starts, ``[B]`` with ``offsets[0] == 0``, or ``[B + 1]``
            ending with L when ``include_last_offset``.
        lengths: Caffe2-style bag sizes ``[B]`` summing to L.
        weights: optional per-lookup weights, the shape of ``indices`` (mode "sum" only).
        mode: "sum", "mean" or "max".
        padding_idx: row id to skip; negative values count from the end (``N + padding_idx``).
        include_last_offset: whether ``offsets`` has B + 1 entries, the last being L.

    Returns:
        ``[B, D]`` float32.

    Raises:
        ValueError: bad mode, inconsistent bag description, weights with mean/max or of the
            wrong length, padding_idx outside ``[-N, N)``.
        IndexError: an index outside ``[0, N)``.

    Example::

        >>> t = np.eye(3, dtype=np.float32)
        >>> pool_reference(t, np.array([[0, 1], [2, 2]]), mode="mean")
        array([[0.5, 0.5, 0. ],
               [0. , 0. , 1. ]], dtype=float32)
    """
    table = np.asarray(table_f32, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError("the table must be 2-D [N, D]")
    num_rows, dim = table.shape
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {_MODES}")
    idx = _as_int_array(indices, "indices")
    if idx.ndim == 2:
        if offsets is not None or lengths is not None:
            raise ValueError("2-D indices take neither offsets nor lengths")
        n_bags, per_bag = idx.shape
        bags = [(b * per_bag, (b + 1) * per_bag) for b in range(n_bags)]
        idx = idx.reshape(-1)
    elif idx.ndim == 1:
        bags = bag_bounds_reference(idx.size, offsets, lengths, include_last_offset)
    else:
        raise ValueError(f"indices must be 1-D or 2-D, got {idx.ndim}-D")
    if weights is not None:
        if mode != "sum":
            raise ValueError("weights are only allowed with mode 'sum'")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != idx.size:
            raise ValueError(f"{w.size} weights for {idx.size} indices")
    else:
        w = np.ones(idx.size, dtype=np.float64)
    pad = None
    if padding_idx is not None:
        pad = int(padding_idx)
        if not -num_rows <= pad < num_rows:
            raise ValueError(f"padding_idx {pad} is outside [-{num_rows}, {num_rows})")
        if pad < 0:
            pad += num_rows

    out = np.zeros((len(bags), dim), dtype=np.float64)
    for b, (start, end) in enumerate(bags):
        rows = idx[start:end]
        bad = (rows < 0) | (rows >= num_rows)
        if bad.any():
            row = int(rows[np.argmax(bad)])
            raise IndexError(f"index {row} in bag {b} is outside [0, {num_rows})")
        keep = rows != pad if pad is not None else np.ones(rows.size, dtype=bool)
        if not keep.any():
            continue  # an empty bag, or only padding: zeros
        vals = table[rows[keep]]
        if mode == "max":
            acc = vals[0].copy()  # torch's rule: the first row, then any greater value, so
            for v in vals[1:]:    # a NaN that comes first stays and a later one is passed over
                acc = np.where(v > acc, v, acc)
            out[b] = acc
        else:
            total = (w[start:end][keep][:, None] * vals).sum(axis=0)
            out[b] = total / keep.sum() if mode == "mean" else total
    return out.astype(np.float32)


def pool_backward_reference(
    grad: Any,
    num_rows: int,
    indices: Any,
    offsets: Any = None,
    lengths: Any = None,
    weights: Any = None,
    mode: str = "sum",
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
) -> np.ndarray:
    """The table's gradient of a sum or mean pooling, one lookup at a time, in float64.

    Each lookup ``j`` of bag ``b`` (row ``r = indices[j]`` not ``padding_idx``) adds
    ``w_j * grad[b]`` to row ``r``, divided by the bag's number of non-padding rows in mean
    mode.

    Args:
        grad: ``[B, D]`` gradient of the pooled output.
        num_rows: N, the table's row count.
        indices, offsets, lengths, weights, padding_idx, include_last_offset: as in
            :func:`pool_reference`.
        mode: "sum" or "mean".

    Returns:
        ``[N, D]`` float32.

    Example::

        >>> g = np.array([[1.0, 2.0]], dtype=np.float32)
        >>> pool_backward_reference(g, 3, np.array([2, 0, 2]), offsets=np.array([0]))
        array([[1., 2.],
               [0., 0.],
               [2., 4.]], dtype=float32)
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"the backward takes mode 'sum' or 'mean', got {mode!r}")
    g = np.asarray(grad, dtype=np.float64)
    idx = _as_int_array(indices, "indices")
    if idx.ndim == 2:
        n_bags, per_bag = idx.shape
        bags = [(b * per_bag, (b + 1) * per_bag) for b in range(n_bags)]
        idx = idx.reshape(-1)
    else:
        bags = bag_bounds_reference(idx.size, offsets, lengths, include_last_offset)
    if g.shape[0] != len(bags):
        raise ValueError(f"grad has {g.shape[0]} rows for {len(bags)} bags")
    w = np.ones(idx.size) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    pad = None if padding_idx is None else int(padding_idx) % num_rows
    out = np.zeros((num_rows, g.shape[1]), dtype=np.float64)
    for b, (start, end) in enumerate(bags):
        keep = [j for j in range(start, end) if idx[j] != pad]
        for j in keep:
            if not 0 <= idx[j] < num_rows:
                raise IndexError(f"index {idx[j]} in bag {b} is outside [0, {num_rows})")
            scale = w[j] / len(keep) if mode == "mean" else w[j]
            out[idx[j]] += scale * g[b]
    return out.astype(np.float32)


def rowwise_row_bytes(bits: int, dim: int) -> int:
    """Bytes of one fused rowwise-quantized row: ``dim + 8`` (8 bits), ``ceil(dim/2) + 4`` (4).

    Example::

        >>> rowwise_row_bytes(4, 7)
        8
    """
    if bits == 8:
        return dim + 8
    if bits == 4:
        return (dim + 1) // 2 + 4
    raise ValueError(f"bits must be 8 or 4, got {bits}")


def quantize_rowwise_reference(x_f32: Any, bits: int) -> np.ndarray:
    """Quantize each row to the fused rowwise format (FBGEMM / Caffe2 / torch layout).

    8 bits: ``D`` uint8 codes, then fp32 scale, then fp32 bias (little-endian);
    ``scale = (max - min) / 255``, ``q = clip(rint((x - min) * 255 / (range + 1e-8)), 0, 255)``,
    ``bias = min``, all in float32 arithmetic.

    Rows holding a NaN or an infinity are refused (they have no scale), as recengine's
    quantizer refuses them.

    4 bits: ``ceil(D/2)`` bytes (column 2k in the low nibble of byte k, column 2k+1 in the high
    nibble, a zero pad nibble when D is odd), then fp16 scale, then fp16 bias;
    ``bias = fp16(min)``, ``scale = fp16((max - bias) / 15)`` (1.0 when the range is not positive
    or the fp16 scale is 0), ``q = clip(rint((x - bias) / scale), 0, 15)``.

    Args:
        x_f32: ``[N, D]`` float array (converted to float32).
        bits: 8 or 4.

    Returns:
        ``[N, row_bytes]`` uint8 with ``row_bytes = rowwise_row_bytes(bits, D)``.

    Example::

        >>> raw = quantize_rowwise_reference(np.array([[0.0, 1.0]], dtype=np.float32), 8)
        >>> raw.shape, raw[0, :2].tolist()
        ((1, 10), [0, 255])
    """
    x = np.ascontiguousarray(np.asarray(x_f32, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError("x must be 2-D [N, D]")
    if not np.isfinite(x).all():
        raise ValueError(f"row {int(np.argmin(np.isfinite(x).all(axis=1)))} is not finite; "
                         "quantized rows must be finite")
    n, dim = x.shape
    if dim == 0:
        raise ValueError("dim must be positive")
    out = np.zeros((n, rowwise_row_bytes(bits, dim)), dtype=np.uint8)
    if n == 0:
        return out
    mn = x.min(axis=1)
    mx = x.max(axis=1)
    if bits == 8:
        rng = (mx - mn).astype(np.float32)
        scale = (rng / np.float32(255.0)).astype(np.float32)
        inv = (np.float32(255.0) / (rng + np.float32(1e-8))).astype(np.float32)
        scaled = ((x - mn[:, None]) * inv[:, None]).astype(np.float32)
        q = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        out[:, :dim] = q
        out[:, dim:dim + 4] = scale.astype("<f4").view(np.uint8).reshape(n, 4)
        out[:, dim + 4:dim + 8] = mn.astype("<f4").view(np.uint8).reshape(n, 4)
        return out
    if bits != 4:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    with np.errstate(over="ignore"):
        bias16 = mn.astype(np.float16)
    bias = bias16.astype(np.float32)
    rng = (mx - bias).astype(np.float32)
    scale = np.where(rng > 0, rng / np.float32(15.0), np.float32(1.0)).astype(np.float32)
    with np.errstate(over="ignore", under="ignore"):
        scale16 = scale.astype(np.float16)
    scale = scale16.astype(np.float32)
    zero = scale == 0
    scale[zero] = np.float32(1.0)
    scale16[zero] = np.float16(1.0)
    inv = (np.float32(1.0) / scale).astype(np.float32)
    scaled = ((x - bias[:, None]) * inv[:, None]).astype(np.float32)
    q = np.clip(np.rint(scaled), 0, 15).astype(np.uint8)
    packed_cols = (dim + 1) // 2
    if dim % 2:
        q = np.concatenate([q, np.zeros((n, 1), dtype=np.uint8)], axis=1)
    out[:, :packed_cols] = q[:, 0::2] | (q[:, 1::2] << 4)
    out[:, packed_cols:packed_cols + 2] = scale16.astype("<f2").view(np.uint8).reshape(n, 2)
    out[:, packed_cols + 2:packed_cols + 4] = bias16.astype("<f2").view(np.uint8).reshape(n, 2)
    return out


def dequantize_rowwise_reference(raw: Any, bits: int, dim: int) -> np.ndarray:
    """Decode fused rowwise-quantized rows (see :func:`quantize_rowwise_reference`).

    ``x = q * scale + bias`` per element, in float32, from the stored scale and bias.

    Args:
        raw: ``[N, row_bytes]`` uint8.
        bits: 8 or 4.
        dim: D, the number of values per row.

    Returns:
        ``[N, D]`` float32.

    Example::

        >>> x = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
        >>> dequantize_rowwise_reference(quantize_rowwise_reference(x, 8), 8, 3).round(2)
        array([[0. , 0.5, 1. ]], dtype=float32)
    """
    r = np.ascontiguousarray(np.asarray(raw, dtype=np.uint8))
    if r.ndim != 2:
        raise ValueError("raw must be 2-D [N, row_bytes]")
    n = r.shape[0]
    if r.shape[1] != rowwise_row_bytes(bits, dim):
        raise ValueError(f"rows of {r.shape[1]} bytes do not hold {bits}-bit rows of dim {dim}")
    if bits == 8:
        q = r[:, :dim].astype(np.float32)
        scale = np.ascontiguousarray(r[:, dim:dim + 4]).view("<f4").reshape(n, 1)
        bias = np.ascontiguousarray(r[:, dim + 4:dim + 8]).view("<f4").reshape(n, 1)
    else:
        packed_cols = (dim + 1) // 2
        packed = r[:, :packed_cols]
        q2 = np.empty((n, 2 * packed_cols), dtype=np.uint8)
        q2[:, 0::2] = packed & 0x0F
        q2[:, 1::2] = packed >> 4
        q = q2[:, :dim].astype(np.float32)
        scale = np.ascontiguousarray(r[:, packed_cols:packed_cols + 2]).view("<f2")
        bias = np.ascontiguousarray(r[:, packed_cols + 2:packed_cols + 4]).view("<f2")
        scale = scale.astype(np.float32).reshape(n, 1)
        bias = bias.astype(np.float32).reshape(n, 1)
    return (q * scale.astype(np.float32) + bias.astype(np.float32)).astype(np.float32)


def rowwise_error_bound_reference(x_f32: Any, bits: int) -> np.ndarray:
    """The largest error ``|dequantize(quantize(x)) - x|`` the rowwise format allows, per row.

    8 bits: half a quantum, ``scale / 2``. 4 bits: half a quantum ``scale16 / 2``, plus what
    storing the bias and scale in fp16 can add: values below an fp16 bias rounded up clip to
    it (``bias16 - min``), and values near the max clip when the fp16 scale was rounded down
    (``range - 15 * scale16``). A row whose scale falls back to 1.0 (range zero, negative after
    rounding the bias, or too small for fp16) gets 0.5 plus the bias term, which covers it.
    Each bound includes a few float32 ulps of slack.

    Args:
        x_f32: ``[N, D]`` float array (converted to float32).
        bits: 8 or 4.

    Returns:
        ``[N]`` float64 bounds.

    Example::

        >>> x = np.array([[0.0, 1.0, 0.3]], dtype=np.float32)
        >>> float(rowwise_error_bound_reference(x, 8)[0]) > 0.5 / 255
        True
    """
    x = np.asarray(x_f32, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError("x must be 2-D [N, D] with D > 0")
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    mn = x.min(axis=1).astype(np.float64)
    mx = x.max(axis=1).astype(np.float64)
    eps = float(np.finfo(np.float32).eps)
    slack = 8 * eps * np.maximum(np.abs(mn), np.abs(mx)) + 1e-30
    raw = quantize_rowwise_reference(x, bits)
    dim = x.shape[1]
    if bits == 8:
        scale = np.ascontiguousarray(raw[:, dim:dim + 4]).view("<f4").reshape(-1)
        return 0.5 * scale.astype(np.float64) * (1 + 1e-3) + slack + 1e-8
    cols = (dim + 1) // 2
    scale = np.ascontiguousarray(raw[:, cols:cols + 2]).view("<f2").reshape(-1).astype(np.float64)
    bias = np.ascontiguousarray(raw[:, cols + 2:cols + 4]).view("<f2").reshape(-1)
    bias = bias.astype(np.float64)
    rng = mx - bias
    return (0.5 * scale * (1 + 1e-3) + np.maximum(0.0, rng - 15 * scale)
            + np.maximum(0.0, bias - mn) + slack)


def to_bf16_reference(x_f32: Any) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even) and return them as float32.

    bfloat16 keeps the upper 16 bits of a float32; NaN stays NaN, infinities stay infinite,
    and values past the largest bfloat16 round to infinity.

    Args:
        x_f32: float array of any shape (converted to float32).

    Returns:
        float32 array of the same shape whose values are exactly representable in bfloat16.

    Example::

        >>> to_bf16_reference(np.array([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8], np.float32))
        array([1.      , 1.015625], dtype=float32)
    """
    x = np.ascontiguousarray(np.asarray(x_f32, dtype=np.float32))
    bits = x.view(np.uint32).astype(np.uint64)
    lsb = (bits >> np.uint64(16)) & np.uint64(1)
    rounded = (bits + np.uint64(0x7FFF) + lsb) & np.uint64(0xFFFF0000)
    out = rounded.astype(np.uint32).view(np.float32).reshape(x.shape)
    return np.where(np.isnan(x), x, out).astype(np.float32)
