"""recengine.privacy: what the embedding rows a request reads give away, measured on real data.

Even with features encrypted and computation in an enclave, the rows a request touches are
visible to the host ("Data Leakage via Access Patterns of Sparse Features in Deep
Learning-based Recommendation Systems", Hashemi et al., 2022). :func:`record` captures them
from every lookup path of recengine (:mod:`.trace`); :mod:`.attacks` reads them as an attacker
would; :mod:`.movielens` and :mod:`.serving` make the traces of MovieLens-100k's users.

Example::

    >>> import numpy as np
    >>> import recengine as rc
    >>> t = rc.EmbeddingTable(np.ones((4, 2), dtype=np.float32))
    >>> with record() as rec:
    ...     with rec.request(7):
    ...         _ = t.lookup(np.array([[2, 3]]))
    >>> rec.rows_by_request()[7]["table0"].tolist()
    [2, 3]
"""

from ..table import OBLIVIOUS, Pad
from .attacks import (
    HashInversion,
    Identification,
    Inference,
    Linking,
    Reidentification,
    identify,
    infer_attribute,
    intersect_sessions,
    invert_hash,
    link,
    reidentify,
    single_bucket_items,
)
from .movielens import STATIC_FEATURES, MovieLens, load_movielens
from .serving import (
    per_user,
    serve_hashed,
    serve_histories,
    serve_ratings,
    serve_static,
    static_tables,
)
from .trace import Access, Recorder, record

__all__ = ["OBLIVIOUS", "STATIC_FEATURES", "Access", "HashInversion", "Identification",
           "Inference", "Linking", "MovieLens", "Pad", "Recorder", "Reidentification",
           "identify", "infer_attribute", "intersect_sessions", "invert_hash", "link",
           "load_movielens", "per_user", "record", "reidentify", "serve_hashed",
           "serve_histories", "serve_ratings", "serve_static", "single_bucket_items",
           "static_tables"]
