"""recengine.nn: drop-in torch embedding modules on the recengine core.

Change one import: ``torch.nn.EmbeddingBag`` -> ``recengine.nn.EmbeddingBag``, or call
``recengine.nn.convert(model)`` to swap every EmbeddingBag of a model in place. Needs torch
(``pip install "recengine[torch]"``).
"""

from . import functional
from .modules import EmbeddingBag, convert

__all__ = ["EmbeddingBag", "convert", "functional"]
