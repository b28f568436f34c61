"""Checks on the files recengine opens: only regular files are read (opening a FIFO blocks
until a writer comes; a directory or device is no table or trace)."""

from __future__ import annotations

import os
import stat
from typing import NamedTuple, Union

import numpy as np

__all__ = ["NpyHeader", "npy_header", "regular_file"]

PathLike = Union[str, "os.PathLike[str]"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def regular_file(path: PathLike) -> str:
    """``path`` as a string if it names a regular file (symlinks followed).

    Raises:
        FileNotFoundError: nothing is there.
        ValueError: it is a directory, FIFO, socket or device.

    Example::

        >>> regular_file("/dev/null")
        Traceback (most recent call last):
        ...
        ValueError: /dev/null is a character device, not a regular file
    """
    p = os.fspath(path)
    mode = os.stat(p).st_mode
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _KINDS if test(mode)), "not a file")
        raise ValueError(f"{p} is {what}, not a regular file")
    return p


class NpyHeader(NamedTuple):
    """Where an ``.npy`` file's array is: its data start at byte ``offset``."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def npy_header(path: PathLike) -> NpyHeader:
    """Read the header of the ``.npy`` file at ``path`` (a regular file) without mapping or
    reading its data.

    Raises:
        ValueError: not a regular file, or not an ``.npy`` file numpy can describe.

    Example::

        >>> import tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.npy")
        >>> np.save(p, np.zeros((3, 4), np.float32))
        >>> npy_header(p)
        NpyHeader(offset=128, shape=(3, 4), dtype=dtype('float32'), fortran_order=False)
    """
    p = regular_file(path)
    fmt = np.lib.format
    with open(p, "rb") as f:
        try:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f, max_header_size=1 << 20)
        except (ValueError, EOFError, SyntaxError) as e:
            raise ValueError(f"{p!r} is not a valid .npy file: {e}") from None
        return NpyHeader(f.tell(), tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran))
