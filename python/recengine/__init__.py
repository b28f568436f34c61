"""recengine: a Rust-accelerated engine for recommendation-model inference.

The core pools embedding rows (SparseLengthsSum / EmbeddingBag) with SIMD kernels chosen at
run time on a multithreaded scheduler; this package is its Python surface.

Example::

    >>> import numpy as np, recengine
    >>> table = recengine.EmbeddingTable.random(1_000, 32, seed=0)
    >>> table.lookup(np.array([3, 5, 7]), offsets=np.array([0, 2])).shape
    (2, 32)
"""

from __future__ import annotations

import os
from typing import Any

from . import _core
from ._core import (
    RecengineError,
    RecengineIndexError,
    RecengineMemoryError,
    RecengineOSError,
    RecengineTypeError,
    RecengineValueError,
)
from ._dtypes import STORAGE_DTYPES
from .collection import EmbeddingCollection
from .functional import embedding_bag, embedding_bag_backward, sparse_lengths_sum
from .table import EmbeddingTable

__version__: str = _core.__version__

__all__ = [
    "STORAGE_DTYPES",
    "THREAD_POOLS",
    "EmbeddingCollection",
    "EmbeddingTable",
    "RecengineError",
    "RecengineIndexError",
    "RecengineMemoryError",
    "RecengineOSError",
    "RecengineTypeError",
    "RecengineValueError",
    "__version__",
    "build_info",
    "embedding_bag",
    "embedding_bag_backward",
    "get_num_threads",
    "get_thread_pool",
    "set_num_threads",
    "set_thread_pool",
    "sparse_lengths_sum",
]


def set_num_threads(n: int) -> None:
    """Set how many threads the core's parallel calls use. Without it the count is the
    ``RECENGINE_NUM_THREADS`` environment variable, else torch's (``torch.get_num_threads()``)
    while the core runs on torch's threads (see :func:`set_thread_pool`), else one per core
    this process may run on. At most 4 per core: a larger ``n`` raises ValueError, and a
    larger ``RECENGINE_NUM_THREADS`` is taken as that maximum.

    Example::

        >>> import recengine
        >>> recengine.set_num_threads(2); recengine.get_num_threads()
        2
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the thread count must be a positive integer, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """How many threads a parallel call of the core made now, from this thread, would use."""
    return _core.get_num_threads()


#: The modes of :func:`set_thread_pool`.
THREAD_POOLS: tuple[str, ...] = ("auto", "torch", "own")


def set_thread_pool(mode: str) -> None:
    """Choose where the core's parallel loops run.

    * ``"auto"`` (the default, or the ``RECENGINE_POOL`` environment variable): on torch's
      own OpenMP worker threads whenever torch is loaded in the process, else on the core's
      own pool. torch's threads keep spinning for a while after each torch op; a second pool
      of threads would fight them for the cores (and slow torch's next op down), while the
      same threads pick the core's work up at once.
    * ``"torch"``: torch's threads; a ValueError unless torch is loaded.
    * ``"own"``: always the core's own pool (the only choice before recengine knew of torch).

    A forked child always uses the core's own pool (OpenMP's threads do not survive a fork).
    Results are identical whichever runs them.

    Example::

        >>> import recengine
        >>> recengine.set_thread_pool("own"); recengine.get_thread_pool()["in_use"]
        'own'
        >>> recengine.set_thread_pool("auto")
    """
    if not isinstance(mode, str) or mode not in THREAD_POOLS:
        raise ValueError(f"unknown thread pool {mode!r}; expected one of {', '.join(THREAD_POOLS)}")
    _core.set_thread_pool(mode)


def get_thread_pool() -> dict[str, Any]:
    """``{"mode": ..., "in_use": "torch" | "own", "library": path or None}``: the mode set,
    where a parallel call made now would run, and the OpenMP runtime's file when on torch's
    threads."""
    mode, in_use, library = _core.get_thread_pool()
    return {"mode": mode, "in_use": in_use, "library": library}


def build_info() -> dict[str, Any]:
    """What this build of the core is: version, build profile, SIMD level in use and those the
    CPU offers, thread count, and the environment variables that steer it.

    Example::

        >>> import recengine
        >>> recengine.build_info()["simd"] in ("avx512", "avx2", "scalar")
        True
    """
    info = dict(_core.build_info())
    info["env"] = {k: os.environ[k] for k in ("RECENGINE_NUM_THREADS", "RECENGINE_POOL",
                                              "RECENGINE_SIMD") if k in os.environ}
    return info
