"""``EmbeddingTable``: one embedding table whose rows live in the Rust core."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from . import _access, _core, _oblivious
from ._access import RECORDERS as _RECORDING
from ._convert import I64, as_int, as_padding_idx
from ._dtypes import normalize_dtype
from ._files import npy_header, regular_file

__all__ = ["OBLIVIOUS", "EmbeddingTable", "Pad"]

OBLIVIOUS = _oblivious.OBLIVIOUS
Pad = _oblivious.Pad

PathLike = Union[str, "os.PathLike[str]"]


class EmbeddingTable:
    """An embedding table of ``num_rows`` rows of ``dim`` values, stored in Rust memory.

    Storage dtypes: ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"`` (fused 8-bit rowwise:
    ``dim`` uint8 then fp32 scale and bias) and ``"int4"`` (fused 4-bit rowwise: ``ceil(dim/2)``
    bytes then fp16 scale and bias). Lookups always return float32.

    Args:
        array: ``[num_rows, dim]`` float array (float32, float16, float64, or ml_dtypes
            bfloat16). It is copied into the table.
        dtype: storage dtype; default keeps float16/bfloat16 arrays as they are and stores
            anything else as fp32. ``"int8"``/``"int4"`` quantize row by row.

    Example::

        >>> import numpy as np, recengine
        >>> t = recengine.EmbeddingTable(np.eye(4, dtype=np.float32))
        >>> t.lookup(np.array([0, 1, 3]), lengths=np.array([2, 1]))
        array([[1., 1., 0., 0.],
               [0., 0., 0., 1.]], dtype=float32)
    """

    __slots__ = ("_oram", "_t")

    def __init__(self, array: Any, dtype: Any = None) -> None:
        arr = np.asarray(array)
        if arr.ndim != 2:
            raise ValueError(f"an embedding table must be 2-D [num_rows, dim], got {arr.ndim}-D")
        if arr.dtype.name == "bfloat16":
            raw = np.ascontiguousarray(arr).view(np.uint8).reshape(arr.shape[0], 2 * arr.shape[1])
            table = _core.Table.from_raw(raw, "bf16", arr.shape[1])
            target = "bf16" if dtype is None else normalize_dtype(dtype)
            self._t = table if target == "bf16" else table.quantize(target)
            return
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise TypeError(f"an embedding table needs float values, got dtype {arr.dtype}")
        if dtype is None:
            target = "fp16" if arr.dtype == np.float16 else "fp32"
        else:
            target = normalize_dtype(dtype)
        # The rows are copied into the table, so any layout is taken ("A": a misaligned view
        # is copied once more, aligned, as the core reads its source in place).
        if arr.dtype != np.float16:
            arr = np.require(arr, dtype=np.float32, requirements="CA")
        else:
            arr = np.require(arr, requirements="CA")
        self._t = _core.Table.from_array(arr, target)

    @classmethod
    def _wrap(cls, table: _core.Table) -> EmbeddingTable:
        obj = cls.__new__(cls)
        obj._t = table
        return obj

    @classmethod
    def random(
        cls, num_rows: int, dim: int, dtype: Any = "fp32", seed: int = 0
    ) -> EmbeddingTable:
        """A table of values uniform in [-1, 1), made in parallel in the core.

        The same ``(num_rows, dim, seed)`` gives the same values whatever the thread count;
        quantized dtypes quantize those values.

        Example::

            >>> t = EmbeddingTable.random(1000, 16, dtype="int8", seed=1)
            >>> t.dtype, t.row_bytes
            ('int8', 24)
        """
        return cls._wrap(_core.Table.random(as_int(num_rows, "num_rows", 0, I64[1]),
                                            as_int(dim, "dim", 1, I64[1]),
                                            normalize_dtype(dtype),
                                            as_int(seed, "seed", 0, 2**64 - 1)))

    @classmethod
    def from_raw(cls, data: Any, dtype: Any, dim: int) -> EmbeddingTable:
        """A table from rows already in storage format ``[num_rows, row_bytes]`` uint8.

        For int8 this is the fused 8-bit rowwise layout that torch's
        ``quantized.embedding_bag_byte_rowwise_offsets`` and FBGEMM use.
        """
        raw = np.asarray(data)
        if raw.dtype != np.uint8:
            raise TypeError(f"raw rows are bytes: a uint8 array [num_rows, row_bytes], got dtype "
                            f"{raw.dtype} (to make a table of values, use EmbeddingTable(array))")
        raw = np.require(raw, requirements="CA")
        return cls._wrap(_core.Table.from_raw(raw, normalize_dtype(dtype),
                                              as_int(dim, "dim", 1, I64[1])))

    @classmethod
    def load(cls, path: PathLike, name: Optional[str] = None, *, mmap: bool = True
             ) -> EmbeddingTable:
        """Load a table from a ``.npy`` or ``.safetensors`` file, memory-mapped by default.

        ``.npy`` files hold float32 or float16 ``[num_rows, dim]``; safetensors files hold
        F32, F16 or BF16 tensors, or quantized tables written by :meth:`save`. ``name`` picks
        the tensor in a safetensors file with several.

        With ``mmap=True`` the file is mapped read-only and rows are paged in on demand, so
        tables larger than RAM work. The file must then stay as it is while the table lives:
        replace a table file by writing a new file and renaming it over the old one (the
        table keeps reading the old rows until loaded again). A file truncated in place
        is detected before each lookup, copy or conversion and raises ``OSError`` instead of
        killing the process with SIGBUS; a truncation racing with a lookup in flight cannot be
        detected. ``mmap=False`` reads the rows into memory now, which is immune to that.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a regular file, an unknown suffix, or contents that are no table.
            TypeError: a dtype a table cannot have.
            MemoryError: ``mmap=False`` and the rows do not fit in memory.

        Example::

            >>> t.save("table.safetensors")  # doctest: +SKIP
            >>> EmbeddingTable.load("table.safetensors", mmap=False)  # doctest: +SKIP
        """
        path = os.fspath(path)
        if path.endswith(".safetensors"):
            return cls._wrap(_core.Table.load_safetensors(regular_file(path), name, bool(mmap)))
        if path.endswith(".npy"):
            return cls._wrap(_core.Table.open(path, *_npy_layout(path), mmap=bool(mmap)))
        raise ValueError(f"cannot tell the format of {path!r}: expected .npy or .safetensors")

    def save(self, path: PathLike, name: str = "weight") -> None:
        """Write the table to ``path``: ``.safetensors`` (any dtype) or ``.npy`` (fp32/fp16).

        Quantized tables are stored as their raw uint8 rows with the format recorded in the
        file's metadata, so :meth:`load` brings them back exactly.
        """
        path = os.fspath(path)
        if path.endswith(".safetensors"):
            self._t.save_safetensors(path, name)
        elif path.endswith(".npy"):
            if self.dtype not in ("fp32", "fp16"):
                raise ValueError(f".npy holds fp32 or fp16 tables; save a {self.dtype} table as "
                                 ".safetensors")
            raw = self._t.raw()
            np.save(path, raw.view(np.float32 if self.dtype == "fp32" else np.float16))
        else:
            raise ValueError(f"cannot tell the format of {path!r}: expected .npy or .safetensors")

    def quantize(self, dtype: Any) -> EmbeddingTable:
        """A new table with the rows converted to ``dtype`` ("int8", "int4", "fp16", "bf16"...).

        Example::

            >>> EmbeddingTable.random(10, 8).quantize("int4").dtype
            'int4'
        """
        return self._wrap(self._t.quantize(normalize_dtype(dtype)))

    def lookup(
        self,
        indices: Any,
        offsets: Any = None,
        lengths: Any = None,
        weights: Any = None,
        mode: str = "sum",
        padding_idx: Optional[int] = None,
        include_last_offset: bool = False,
        oblivious: Union[str, Pad, None] = None,
    ) -> np.ndarray:
        """Pool rows into bags: ``out[b] = reduce_{j in bag b} w_j * T[indices[j]]``.

        Args:
            indices: 1-D ``[L]`` int32/int64 row ids, or 2-D ``[B, n]`` for B bags of n each.
            offsets: 1-D start of each bag in ``indices`` (torch style, ``offsets[0] == 0``);
                ``[B]``, or ``[B + 1]`` with ``include_last_offset=True``.
            lengths: 1-D ``[B]`` size of each bag (Caffe2 style). Give offsets or lengths
                with 1-D indices, neither with 2-D indices.
            weights: optional ``[L]`` float32 per-lookup weights (mode "sum" only).
            mode: ``"sum"``, ``"mean"`` or ``"max"``.
            padding_idx: a row id skipped wherever it appears (not counted by mean);
                negative values count from the end, as in torch.
            include_last_offset: whether ``offsets`` ends with ``L``.
            oblivious: read the table so that the rows read give the ids away to no one
                watching memory (``recengine.privacy``); the output is bit for bit the plain
                lookup's; no ``padding_idx``. ``"scan"``: the whole table once, in order (a
                read of the table and ``rows x L`` branch-free row selects a call).
                ``"oram"``: each row through a Path ORAM of the rows (:meth:`oram`; one
                random tree path per lookup). ``"pad"`` or a :class:`Pad`: each bag read as
                ``count`` rows, ids and dummies shuffled (weaker: see :class:`Pad`).

        Returns:
            ``[B, dim]`` float32. Empty bags give zeros.

        Raises:
            IndexError: an index outside ``[0, num_rows)``, naming the index and its bag.
            ValueError: inconsistent offsets/lengths/weights, or an unknown mode.
            TypeError: non-integer indices.
        """
        if oblivious is not None:
            return _oblivious.lookup(self, oblivious, indices, offsets, lengths, weights, mode,
                                     padding_idx, include_last_offset)
        out = self._t.lookup(indices, offsets, lengths, weights, mode,
                             as_padding_idx(padding_idx), include_last_offset)
        if _RECORDING:  # the hook: one test while nobody records
            _access.note(self, indices, offsets, lengths, include_last_offset)
        return out

    def oram(self, seed: Optional[int] = None) -> _core.Oram:
        """The Path ORAM that ``lookup(..., oblivious="oram")`` reads through, built on first
        use (a copy of the rows in a tree of about 2-4x their count in blocks, plus the
        position maps' ORAMs; ``nbytes`` says how much), seeded from the OS unless ``seed``
        is given then. Its ``levels`` and ``stash_max`` describe it.

        Example::

            >>> t = EmbeddingTable.random(5000, 8)
            >>> o = t.oram(seed=1)
            >>> o.levels, t.oram() is o
            ([13, 9], True)
        """
        o = getattr(self, "_oram", None)
        if o is None:
            o = self._oram = _oblivious.new_oram(self, seed)
        return o

    def slice(self, rows: tuple[int, int], cols: Optional[tuple[int, int]] = None
              ) -> EmbeddingTable:
        """A new owned table of rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` (all
        columns by default), in the same format: quantized rows keep their scale and bias, so
        every value reads back exactly. Only those rows are read from a memory-mapped table.

        Example::

            >>> EmbeddingTable.random(100, 8).slice((10, 20), (2, 6)).shape
            (10, 4)
        """
        c0, c1 = (0, self.dim) if cols is None else cols
        r0, r1 = (as_int(r, "rows", 0, self.num_rows) for r in rows)
        c0, c1 = (as_int(c, "cols", 0, self.dim) for c in (c0, c1))
        return self._wrap(self._t.slice(r0, r1, c0, c1))

    def to_numpy(self) -> np.ndarray:
        """All rows as a new ``[num_rows, dim]`` float32 array (dequantized)."""
        return self._t.to_numpy()

    def raw_rows(self) -> np.ndarray:
        """A copy of the stored rows as ``[num_rows, row_bytes]`` uint8."""
        return self._t.raw()

    @property
    def num_rows(self) -> int:
        return self._t.num_rows

    @property
    def dim(self) -> int:
        return self._t.dim

    @property
    def dtype(self) -> str:
        """Storage dtype: "fp32", "fp16", "bf16", "int8" or "int4"."""
        return self._t.dtype

    @property
    def nbytes(self) -> int:
        """Bytes the rows take in storage."""
        return self._t.nbytes

    @property
    def row_bytes(self) -> int:
        return self._t.row_bytes

    @property
    def is_memory_mapped(self) -> bool:
        return self._t.is_mmap

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.dim)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        where = ", mmap" if self.is_memory_mapped else ""
        return (f"EmbeddingTable(num_rows={self.num_rows}, dim={self.dim}, "
                f"dtype={self.dtype!r}, nbytes={self.nbytes}{where})")


def _npy_layout(path: str) -> tuple[int, int, int, str]:
    """``(offset, rows, dim, dtype)`` of the 2-D float32/float16 array in an ``.npy`` file."""
    head = npy_header(path)
    if len(head.shape) != 2:
        raise ValueError(f"{path!r} does not hold a 2-D array (shape {head.shape})")
    if head.fortran_order and min(head.shape) > 1:
        raise ValueError(f"{path!r} is stored in Fortran order; save it C-contiguous")
    if head.dtype.newbyteorder("=") != head.dtype:
        raise ValueError(f"{path!r} is not little-endian")
    dtypes = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}
    if head.dtype not in dtypes:
        raise TypeError(f"{path!r} holds {head.dtype}; .npy tables must be float32 or float16")
    rows, dim = head.shape
    return head.offset, rows, dim, dtypes[head.dtype]
