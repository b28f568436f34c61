"""recengine.models: the eight DeepRecInfra recommendation models (DeepRecSys).

``build(name, scale=...)`` makes one with recengine embeddings: DLRM-RMC1/2/3, WnD, MT-WnD,
NCF, DIN (attention over behaviours) and DIEN (GRU + AUGRU interest evolution). Tables have
the DeepRecInfra shapes with row counts times ``scale`` (:data:`DEFAULT_SCALE` keeps all eight
models together under 2 GB); weights are random (seeded) or loaded from a file. Needs torch.

Example::

    >>> import recengine.models as rm
    >>> model = rm.build("rmc1", scale=1e-3)
    >>> batch = model.sample_batch(16, distribution="zipf", seed=0)
    >>> model(batch).shape
    torch.Size([16, 1])
"""

from .base import Batch, Feature, RecModel, mlp
from .build import DEFAULT_SCALE, TARGETS_MS, build, model_names
from .zoo import AUGRU, DIEN, DIN, DLRM, NCF, MultiTaskWideAndDeep, WideAndDeep

__all__ = [
    "AUGRU",
    "DEFAULT_SCALE",
    "DIEN",
    "DIN",
    "DLRM",
    "NCF",
    "TARGETS_MS",
    "Batch",
    "Feature",
    "MultiTaskWideAndDeep",
    "RecModel",
    "WideAndDeep",
    "build",
    "mlp",
    "model_names",
]
