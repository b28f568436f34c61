"""Fixed malloc thresholds for a serving process.

glibc's malloc serves a large block (128 KiB at first) with its own ``mmap`` and gives it
back with ``munmap`` when freed, so every forward that allocates such blocks faults its pages
in anew; it raises that threshold as it frees larger blocks. A fresh worker therefore runs a
model slower until it has once run a large batch: on the 16-core host, DIEN's 256-item
forward held a worker 33 ms before any 1,024-item forward and 25 ms after
(benches/notes/serving.md, "A fresh worker's allocator"), which a profile taken first then
carries into the simulator.
:func:`steady_malloc` fixes the thresholds (as ``mallopt(3)`` documents, setting them turns
the adjustment off), so a worker runs at its steady speed from its first forward.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "steady_malloc"]

#: Blocks up to this many bytes come from the heap, not their own ``mmap``: glibc's largest
#: threshold on 64-bit systems (the one its adjustment stops at).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap up to this many bytes is kept for the next forward,
#: not handed back to the system.
TRIM_THRESHOLD = 512 << 20

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def steady_malloc() -> bool:
    """Fix this process's malloc thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`)
    where the C library is glibc; returns whether it did (``False`` elsewhere: musl, macOS).

    Example::

        >>> isinstance(steady_malloc(), bool)
        True
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt differs
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
