"""Weights on 2 MiB pages.

A pooled lookup reads rows at random all over a table, so on 4 KiB pages nearly every row costs
a TLB miss, and, once the caches are cold, a page-table walk that itself goes to memory. On
2 MiB (transparent huge) pages the same table needs 512 times fewer translations. recengine's
own tables (``recengine.EmbeddingTable``) live on such pages; these functions put torch
weights there too: :class:`recengine.nn.EmbeddingBag` and
:class:`recengine.nn.EmbeddingBagCollection` allocate their weights with :func:`empty`, and
:func:`recengine.nn.convert` moves converted weights with :func:`to_huge_pages`.

The memory is a private anonymous mapping aligned to 2 MiB and advised ``MADV_HUGEPAGE``,
shared with torch without a copy (``torch.from_numpy``), so it is an ordinary CPU tensor to
torch (optimizers, ``state_dict``, ``torch.save``, autograd). Where transparent huge pages are
off (``/sys/kernel/mm/transparent_hugepage/enabled`` is ``never``), on other systems, for
tensors under 2 MiB, and for CUDA tensors, nothing moves. (numpy advises its own allocations of
4 MiB and more the same way, but its arrays are not 2 MiB aligned and recengine cannot tell
them apart, so the kernels treat them as 4 KiB pages.)

Example::

    >>> w = to_huge_pages(torch.zeros(1024, 1024))  # 4 MiB
    >>> on_huge_pages(w) == huge_pages_available()
    True
"""

from __future__ import annotations

import functools
import mmap
import sys
import threading
import weakref
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["HUGE_PAGE", "empty", "huge_pages_available", "on_huge_pages", "to_huge_pages"]

#: The huge page size (bytes) the mappings are aligned to; smaller tensors stay where they are.
HUGE_PAGE = 2 << 20

# Our mappings by start address: (end address, a weak reference to the mmap). An entry goes
# when its mapping is freed (the tensors over it hold it alive until then).
_MAPPINGS: dict[int, tuple[int, weakref.ref[mmap.mmap]]] = {}
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def huge_pages_available() -> bool:
    """Whether this system gives transparent huge pages to mappings that ask (Linux with THP
    ``always`` or ``madvise``)."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def empty(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """An uninitialised (zero-filled) CPU tensor of ``shape`` on huge pages, or ``torch.empty``
    where they do not apply (see the module's note).

    Example::

        >>> empty((4, 8)).shape
        torch.Size([4, 8])
    """
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    if nbytes < HUGE_PAGE or not huge_pages_available():
        return torch.empty(shape, dtype=dtype)
    # Over-allocate one huge page so that the tensor can start on a 2 MiB boundary.
    # Private: a shared anonymous mapping (mmap's default) is shmem, which THP leaves alone.
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(mapping, dtype=np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE
    view = raw[start:start + nbytes]
    address = view.ctypes.data
    key = address

    def forget(_ref: object) -> None:
        with _LOCK:
            entry = _MAPPINGS.get(key)
            if entry is not None and entry[1] is _ref:
                del _MAPPINGS[key]

    with _LOCK:
        _MAPPINGS[key] = (address + nbytes, weakref.ref(mapping, forget))
    # The uint8 view keeps the mapping alive; torch keeps the view alive.
    return torch.from_numpy(view).view(dtype).view(shape)


def on_huge_pages(t: Tensor) -> bool:
    """Whether ``t``'s elements lie in a mapping made by :func:`empty` (THP being
    available)."""
    if not t.is_cpu or not huge_pages_available():
        return False
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    with _LOCK:
        return any(s <= start and end <= e and ref() is not None
                   for s, (e, ref) in _MAPPINGS.items())


def to_huge_pages(t: Tensor) -> Tensor:
    """``t`` copied onto huge pages (same shape, dtype and values; C-contiguous), or ``t``
    itself when it is there already or huge pages do not apply (see the module's note).

    Example::

        >>> w = torch.nn.Parameter(torch.rand(4096, 128))
        >>> w.data = to_huge_pages(w.data)  # same Parameter, new storage
    """
    if (not t.is_cpu or t.numel() * t.element_size() < HUGE_PAGE
            or not huge_pages_available() or on_huge_pages(t)):
        return t
    out = empty(t.shape, t.dtype)
    with torch.no_grad():
        out.copy_(t)
    return out
