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
from ._dtypes import STORAGE_DTYPES
from .collection import EmbeddingCollection
from .functional import embedding_bag, embedding_bag_backward, sparse_lengths_sum
from .table import EmbeddingTable

__version__: str = _core.__version__

__all__ = [
    "STORAGE_DTYPES",
    "EmbeddingCollection",
    "EmbeddingTable",
    "__version__",
    "build_info",
    "embedding_bag",
    "embedding_bag_backward",
    "get_num_threads",
    "set_num_threads",
    "sparse_lengths_sum",
]


def set_num_threads(n: int) -> None:
    """Set how many threads the core's pool uses (the default is the ``RECENGINE_NUM_THREADS``
    environment variable, else the cores this process may run on).

    Example::

        >>> import recengine
        >>> recengine.set_num_threads(2); recengine.get_num_threads()
        2
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the thread count must be a positive integer, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """How many threads the core's pool uses."""
    return _core.get_num_threads()


def build_info() -> dict[str, Any]:
    """What this build of the core is: version, build profile, SIMD level in use and those the
    CPU offers, thread count, and the environment variables that steer it.

    Example::

        >>> import recengine
        >>> recengine.build_info()["simd"] in ("avx512", "avx2", "scalar")
        True
    """
    info = dict(_core.build_info())
    info["env"] = {k: os.environ[k] for k in ("RECENGINE_NUM_THREADS", "RECENGINE_SIMD")
                   if k in os.environ}
    return info
