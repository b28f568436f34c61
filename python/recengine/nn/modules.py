"""``recengine.nn.EmbeddingBag`` and ``convert``."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from . import hugepages
from ._oblivious import ObliviousReads
from ._op import MODES
from .functional import embedding_bag

__all__ = ["EmbeddingBag", "convert"]


class EmbeddingBag(ObliviousReads, torch.nn.EmbeddingBag):
    """Drop-in for :class:`torch.nn.EmbeddingBag` whose forward runs on the recengine core.

    The constructor, attributes (``weight`` as an ``nn.Parameter``, ``num_embeddings``,
    ``embedding_dim``, ``mode``, ``padding_idx`` ...), ``from_pretrained``,
    ``reset_parameters`` and ``state_dict`` keys are torch's own, so torch checkpoints load
    unchanged and back. See :func:`recengine.nn.functional.embedding_bag` for what runs on
    the core and what falls back to torch's kernel. A CPU weight the constructor allocates
    lives on huge pages (:mod:`recengine.nn.hugepages`); one handed in (``_weight``,
    ``from_pretrained``) stays where it is, shared as in torch.

    One keyword more than torch's: ``oblivious`` (``"scan"``, ``"oram"``, ``"pad"`` or a
    :class:`recengine.table.Pad`; default None) reads the rows so that the memory accesses do
    not give the ids away (:meth:`recengine.EmbeddingTable.lookup`; bit for bit the plain
    output). It serves inference: a forward that needs a gradient is refused (the backward's
    scatter would show the ids), and the weight is copied into a core table once per version
    of it (changed in place through the ``Parameter``, it is copied again at the next forward;
    a change through ``weight.data`` bypasses torch's version counter: set ``oblivious``
    again to drop the copy).

    Example::

        >>> bag = EmbeddingBag(1000, 16, mode="sum")
        >>> bag(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
        >>> safe = EmbeddingBag(1000, 16, oblivious="oram")
        >>> with torch.no_grad():
        ...     safe(torch.tensor([[1, 2], [3, 4]])).shape
        torch.Size([2, 16])
    """

    def __init__(self, *args: Any, oblivious: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.oblivious = oblivious
        if self.mode not in MODES:  # torch takes any string here and fails at the first call
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        # A weight allocated here moves to huge pages (one copy, at construction); a weight
        # handed in (``_weight``, as ``from_pretrained`` does) stays shared, as in torch.
        if kwargs.get("_weight") is None and (len(args) < 8 or args[7] is None):
            self.weight.data = hugepages.to_huge_pages(self.weight.data)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        if self.oblivious is not None:
            return self._forward_oblivious(input, offsets, per_sample_weights)
        return embedding_bag(input, self.weight, offsets, self.max_norm, self.norm_type,
                             self.scale_grad_by_freq, self.mode, self.sparse,
                             per_sample_weights, self.include_last_offset, self.padding_idx)


    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra if self.oblivious is None else f"{extra}, oblivious={self.oblivious!r}"

    def _forward_oblivious(self, input: Tensor, offsets: Optional[Tensor],
                           per_sample_weights: Optional[Tensor]) -> Tensor:
        if self.padding_idx is not None or self.max_norm is not None:
            raise ValueError("an oblivious lookup takes no padding_idx or max_norm")
        return self._oblivious_tables.pool(self.weight, input, offsets, per_sample_weights,
                                           self.mode, self.include_last_offset, self.oblivious)


def convert(model: torch.nn.Module, huge_pages: bool = True) -> torch.nn.Module:
    """Replace every ``torch.nn.EmbeddingBag`` in ``model`` (at any depth) in place by a
    :class:`EmbeddingBag` that shares its weight ``Parameter`` and settings, and every
    ``torchrec`` ``EmbeddingBagCollection`` by a :class:`recengine.nn.EmbeddingBagCollection`
    sharing its tables; returns ``model`` (a bare module passed in is returned converted).

    With ``huge_pages`` (the default) each converted CPU weight of 2 MiB or more moves onto
    huge pages (:func:`recengine.nn.hugepages.to_huge_pages`, one copy): the ``Parameter``
    stays the same object, so optimizers and the old module see the move, but other tensors
    that shared its old storage no longer do.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.EmbeddingBag(10, 4))
        >>> type(convert(model)[0]).__name__
        'EmbeddingBag'
    """
    if type(model) is torch.nn.EmbeddingBag:
        return _converted(model, huge_pages)
    if _is_torchrec_collection(model):
        return _collection(model, huge_pages)
    for name, child in list(model.named_children()):
        if type(child) is torch.nn.EmbeddingBag:
            setattr(model, name, _converted(child, huge_pages))
        elif _is_torchrec_collection(child):
            setattr(model, name, _collection(child, huge_pages))
        else:
            convert(child, huge_pages)
    return model


def _rehome(weight: torch.nn.Parameter) -> None:
    """Move ``weight``'s storage onto huge pages, keeping the Parameter."""
    moved = hugepages.to_huge_pages(weight.data)
    if moved is not weight.data:
        weight.data = moved


def _is_torchrec_collection(module: torch.nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "EmbeddingBagCollection" and cls.__module__.startswith("torchrec")


def _collection(module: torch.nn.Module, huge_pages: bool) -> torch.nn.Module:
    from .collection import EmbeddingBagCollection

    if huge_pages:
        for bag in module.embedding_bags.values():  # type: ignore[union-attr,operator]
            _rehome(bag.weight)
    return EmbeddingBagCollection.from_torchrec(module)


def _converted(old: torch.nn.EmbeddingBag, huge_pages: bool) -> EmbeddingBag:
    new = EmbeddingBag(old.num_embeddings, old.embedding_dim, max_norm=old.max_norm,
                       norm_type=old.norm_type, scale_grad_by_freq=old.scale_grad_by_freq,
                       mode=old.mode, sparse=old.sparse,
                       include_last_offset=old.include_last_offset,
                       padding_idx=old.padding_idx, device="meta")
    if huge_pages:
        _rehome(old.weight)
    new.weight = old.weight
    new.train(old.training)
    return new
