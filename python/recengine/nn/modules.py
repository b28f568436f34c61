"""``recengine.nn.EmbeddingBag`` and ``convert``."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .functional import embedding_bag

__all__ = ["EmbeddingBag", "convert"]


class EmbeddingBag(torch.nn.EmbeddingBag):
    """Drop-in for :class:`torch.nn.EmbeddingBag` whose forward runs on the recengine core.

    The constructor, attributes (``weight`` as an ``nn.Parameter``, ``num_embeddings``,
    ``embedding_dim``, ``mode``, ``padding_idx`` ...), ``from_pretrained``,
    ``reset_parameters`` and ``state_dict`` keys are torch's own, so torch checkpoints load
    unchanged and back. See :func:`recengine.nn.functional.embedding_bag` for what runs on
    the core and what falls back to torch's kernel.

    Example::

        >>> bag = EmbeddingBag(1000, 16, mode="sum")
        >>> bag(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return embedding_bag(input, self.weight, offsets, self.max_norm, self.norm_type,
                             self.scale_grad_by_freq, self.mode, self.sparse,
                             per_sample_weights, self.include_last_offset, self.padding_idx)


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``torch.nn.EmbeddingBag`` in ``model`` (at any depth) in place by a
    :class:`EmbeddingBag` that shares its weight ``Parameter`` and settings, and every
    ``torchrec`` ``EmbeddingBagCollection`` by a :class:`recengine.nn.EmbeddingBagCollection`
    sharing its tables; returns ``model`` (a bare module passed in is returned converted).

    Example::

        >>> model = torch.nn.Sequential(torch.nn.EmbeddingBag(10, 4))
        >>> type(convert(model)[0]).__name__
        'EmbeddingBag'
    """
    if type(model) is torch.nn.EmbeddingBag:
        return _converted(model)
    if _is_torchrec_collection(model):
        return _collection().from_torchrec(model)
    for name, child in list(model.named_children()):
        if type(child) is torch.nn.EmbeddingBag:
            setattr(model, name, _converted(child))
        elif _is_torchrec_collection(child):
            setattr(model, name, _collection().from_torchrec(child))
        else:
            convert(child)
    return model


def _is_torchrec_collection(module: torch.nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "EmbeddingBagCollection" and cls.__module__.startswith("torchrec")


def _collection() -> Any:
    from .collection import EmbeddingBagCollection

    return EmbeddingBagCollection


def _converted(old: torch.nn.EmbeddingBag) -> EmbeddingBag:
    new = EmbeddingBag(old.num_embeddings, old.embedding_dim, max_norm=old.max_norm,
                       norm_type=old.norm_type, scale_grad_by_freq=old.scale_grad_by_freq,
                       mode=old.mode, sparse=old.sparse,
                       include_last_offset=old.include_last_offset,
                       padding_idx=old.padding_idx, device="meta")
    new.weight = old.weight
    new.train(old.training)
    return new
