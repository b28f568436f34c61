"""Keyed jagged input and keyed pooled output, in TorchRec's layout.

A :class:`KeyedJaggedTensor` holds, for K keys (sparse features) and a batch of B samples,
one flat ``values`` tensor of ids, key-major: key 0's ids for sample 0, sample 1, ..., then key
1's; ``lengths`` ``[K * B]`` says how many ids each (key, sample) has. A
:class:`KeyedTensor` is the pooled result: ``[B, sum(D_k)]`` with each key's columns.

Example::

    >>> kjt = KeyedJaggedTensor(["f1", "f2"], torch.tensor([1, 2, 3, 4, 5]),
    ...                         lengths=torch.tensor([2, 0, 1, 2]))
    >>> kjt.stride(), kjt.length_per_key()
    (2, [2, 3])
    >>> kjt["f2"].values()
    tensor([3, 4, 5])
"""

from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["JaggedTensor", "KeyedJaggedTensor", "KeyedTensor"]


def _lengths_from_offsets(offsets: Tensor) -> Tensor:
    return offsets[1:] - offsets[:-1]


def _prefix_sums(counts: Sequence[int]) -> list[int]:
    """``[0, c0, c0 + c1, ...]``: where each of ``counts`` starts, then the total."""
    return [0, *itertools.accumulate(counts)]


def _offsets_from_lengths(lengths: Tensor) -> Tensor:
    out = torch.zeros(lengths.numel() + 1, dtype=lengths.dtype, device=lengths.device)
    torch.cumsum(lengths, 0, out=out[1:])
    return out


class JaggedTensor:
    """One key's ids for a batch: ``values`` ``[L]`` split into B bags by ``lengths`` ``[B]``,
    with optional per-id ``weights`` ``[L]``."""

    def __init__(self, values: Tensor, lengths: Tensor, weights: Optional[Tensor] = None) -> None:
        self._values, self._lengths, self._weights = values, lengths, weights

    def values(self) -> Tensor:
        return self._values

    def lengths(self) -> Tensor:
        return self._lengths

    def offsets(self) -> Tensor:
        """``[B + 1]`` bag boundaries."""
        return _offsets_from_lengths(self._lengths)

    def weights(self) -> Tensor:
        if self._weights is None:
            raise ValueError("this JaggedTensor has no weights")
        return self._weights

    def weights_or_none(self) -> Optional[Tensor]:
        return self._weights

    def __repr__(self) -> str:
        return f"JaggedTensor(values={self._values}, lengths={self._lengths})"


class KeyedJaggedTensor:
    """Ids of K keys for a batch of B samples, key-major (TorchRec's ``KeyedJaggedTensor``).

    Args:
        keys: the K key (feature) names.
        values: ``[L]`` int32/int64 ids of every key, key-major.
        weights: optional ``[L]`` float weights, one per id (for weighted features).
        lengths: ``[K * B]`` ids per (key, sample); or give ``offsets``.
        offsets: ``[K * B + 1]`` boundaries into ``values``.
        stride: B; inferred from the lengths and the key count when not given.

    Raises:
        ValueError: lengths and offsets both or neither given, sizes that do not add up.

    Example::

        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([4, 5, 6]),
        ...                                           torch.tensor([1, 2]))
        >>> kjt.offsets()
        tensor([0, 1, 3])
    """

    def __init__(
        self,
        keys: Sequence[str],
        values: Tensor,
        weights: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
        offsets: Optional[Tensor] = None,
        stride: Optional[int] = None,
    ) -> None:
        self._keys = list(keys)
        if (lengths is None) == (offsets is None):
            raise ValueError("give a KeyedJaggedTensor its lengths or its offsets (one of them)")
        if lengths is None:
            assert offsets is not None
            if offsets.dim() != 1 or offsets.numel() < 1:
                raise ValueError("offsets must be 1-D with at least one entry")
            lengths = _lengths_from_offsets(offsets)
        if values.dim() != 1 or lengths.dim() != 1:
            raise ValueError(f"values and lengths must be 1-D, got {values.dim()}-D and "
                             f"{lengths.dim()}-D")
        k = len(self._keys)
        if stride is None:
            if k == 0:
                stride = 0
            elif lengths.numel() % k:
                raise ValueError(f"{lengths.numel()} lengths do not split over {k} keys")
            else:
                stride = lengths.numel() // k
        if lengths.numel() != k * stride:
            raise ValueError(f"{lengths.numel()} lengths for {k} keys of batch {stride}")
        if weights is not None and weights.shape != values.shape:
            raise ValueError(f"weights {tuple(weights.shape)} must match values "
                             f"{tuple(values.shape)}")
        self._values, self._weights, self._lengths = values, weights, lengths
        self._offsets = offsets
        self._stride = stride
        self._length_per_key: Optional[list[int]] = None

    @staticmethod
    def from_lengths_sync(keys: Sequence[str], values: Tensor, lengths: Tensor,
                          weights: Optional[Tensor] = None,
                          stride: Optional[int] = None) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys, values, weights, lengths=lengths, stride=stride)

    @staticmethod
    def from_offsets_sync(keys: Sequence[str], values: Tensor, offsets: Tensor,
                          weights: Optional[Tensor] = None,
                          stride: Optional[int] = None) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys, values, weights, offsets=offsets, stride=stride)

    @staticmethod
    def from_jt_dict(jt_dict: dict[str, JaggedTensor]) -> KeyedJaggedTensor:
        """Concatenate per-key JaggedTensors of one batch size."""
        keys = list(jt_dict)
        jts = [jt_dict[k] for k in keys]
        weighted = [jt.weights_or_none() is not None for jt in jts]
        if any(weighted) and not all(weighted):
            raise ValueError("either every JaggedTensor has weights or none has")
        empty = torch.zeros(0, dtype=torch.long)
        values = torch.cat([jt.values() for jt in jts]) if jts else empty
        lengths = torch.cat([jt.lengths() for jt in jts]) if jts else empty
        weights = torch.cat([jt.weights() for jt in jts]) if jts and all(weighted) else None
        return KeyedJaggedTensor(keys, values, weights, lengths=lengths)

    def keys(self) -> list[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def weights(self) -> Tensor:
        if self._weights is None:
            raise ValueError("this KeyedJaggedTensor has no weights")
        return self._weights

    def weights_or_none(self) -> Optional[Tensor]:
        return self._weights

    def lengths(self) -> Tensor:
        return self._lengths

    def offsets(self) -> Tensor:
        if self._offsets is None:
            self._offsets = _offsets_from_lengths(self._lengths)
        return self._offsets

    def stride(self) -> int:
        """B, the batch size."""
        return self._stride

    def length_per_key(self) -> list[int]:
        """How many ids each key has in the batch."""
        if self._length_per_key is None:
            k, b = len(self._keys), self._stride
            per_key = self._lengths.reshape(k, b).sum(dim=1) if k and b else \
                torch.zeros(k, dtype=torch.long, device=self._lengths.device)
            self._length_per_key = [int(x) for x in per_key.tolist()]
        return self._length_per_key

    def offset_per_key(self) -> list[int]:
        return _prefix_sums(self.length_per_key())

    def __getitem__(self, key: str) -> JaggedTensor:
        k = self._keys.index(key)
        start, end = self.offset_per_key()[k:k + 2]
        b = self._stride
        w = None if self._weights is None else self._weights[start:end]
        return JaggedTensor(self._values[start:end], self._lengths[k * b:(k + 1) * b], w)

    def to_dict(self) -> dict[str, JaggedTensor]:
        return {k: self[k] for k in self._keys}

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return (f"KeyedJaggedTensor(keys={self._keys}, stride={self._stride}, "
                f"values={self._values.numel()} ids)")


class KeyedTensor:
    """Pooled outputs of several keys side by side: ``values`` ``[B, sum(D_k)]``, key ``k``
    in the columns ``offset_per_key()[k]:offset_per_key()[k + 1]`` (TorchRec's
    ``KeyedTensor``).

    Example::

        >>> kt = KeyedTensor(["a", "b"], [2, 1], torch.arange(6.0).reshape(2, 3))
        >>> kt["b"]
        tensor([[2.],
                [5.]])
    """

    def __init__(self, keys: Sequence[str], length_per_key: Sequence[int], values: Tensor,
                 key_dim: int = 1) -> None:
        if key_dim != 1:
            raise ValueError("only key_dim=1 (keys side by side in columns) is supported")
        if sum(length_per_key) != values.shape[1] or len(keys) != len(length_per_key):
            raise ValueError("the keys' lengths must add up to the values' columns")
        self._keys, self._lengths, self._values = list(keys), list(length_per_key), values

    def keys(self) -> list[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def key_dim(self) -> int:
        return 1

    def length_per_key(self) -> list[int]:
        return self._lengths

    def offset_per_key(self) -> list[int]:
        return _prefix_sums(self._lengths)

    def __getitem__(self, key: str) -> Tensor:
        k = self._keys.index(key)
        start, end = self.offset_per_key()[k:k + 2]
        return self._values[:, start:end]

    def to_dict(self) -> dict[str, Tensor]:
        return {k: self[k] for k in self._keys}

    def __repr__(self) -> str:
        return f"KeyedTensor(keys={self._keys}, values={tuple(self._values.shape)})"


def as_kjt(features: Any) -> KeyedJaggedTensor:
    """Our KeyedJaggedTensor from ours or from a ``torchrec.sparse.jagged_tensor`` one (read
    through its public accessors, so torchrec needs not be importable here)."""
    if isinstance(features, KeyedJaggedTensor):
        return features
    if all(hasattr(features, a) for a in ("keys", "values", "lengths", "weights_or_none",
                                          "stride")):
        return KeyedJaggedTensor(features.keys(), features.values(),
                                 features.weights_or_none(), lengths=features.lengths(),
                                 stride=features.stride())
    raise TypeError(f"expected a KeyedJaggedTensor, got {type(features).__name__}")
