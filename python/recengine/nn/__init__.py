"""recengine.nn: drop-in torch embedding modules on the recengine core.

Change one import: ``torch.nn.EmbeddingBag`` -> ``recengine.nn.EmbeddingBag``, or call
``recengine.nn.convert(model)`` to swap every EmbeddingBag of a model in place. Many tables
with keyed jagged input: :class:`EmbeddingBagCollection` (TorchRec's interface, one core call).
Quantized inference: :class:`QuantEmbeddingBag`. CPU weights that recengine allocates or
converts live on huge pages (:mod:`recengine.nn.hugepages`). Needs torch
(``pip install "recengine[torch]"``).
"""

from . import functional, hugepages
from .collection import EmbeddingBagCollection
from .configs import DataType, EmbeddingBagConfig, PoolingType
from .jagged import JaggedError, JaggedTensor, KeyedJaggedTensor, KeyedTensor
from .modules import EmbeddingBag, convert
from .quant import QUANT_DTYPES, QuantEmbeddingBag

__all__ = [
    "QUANT_DTYPES",
    "DataType",
    "EmbeddingBag",
    "EmbeddingBagCollection",
    "EmbeddingBagConfig",
    "JaggedError",
    "JaggedTensor",
    "KeyedJaggedTensor",
    "KeyedTensor",
    "PoolingType",
    "QuantEmbeddingBag",
    "convert",
    "functional",
    "hugepages",
]
