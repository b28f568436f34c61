"""Keyed jagged input and keyed pooled output, with TorchRec's classes' interface.

:class:`JaggedTensor`, :class:`KeyedJaggedTensor` and :class:`KeyedTensor` have TorchRec's
constructors, methods and layout, so code written against ``torchrec.sparse.jagged_tensor``
runs on them; they need only torch (no FBGEMM). A :class:`KeyedJaggedTensor` holds, for K keys
(sparse features), one flat ``values`` tensor of ids, key-major: key 0's ids for sample 0,
sample 1, ..., then key 1's; ``lengths`` says how many ids each (key, sample) has. Every key has
the same batch size (``stride``), or, with ``stride_per_key_per_rank``, its own ("variable
batch"). A :class:`KeyedTensor` is a pooled result: ``[B, sum(D_k)]`` with each key's columns.

Where they differ from TorchRec's: invalid input raises :class:`JaggedError` (a ``ValueError``
that is also the ``AssertionError`` TorchRec raises), and the distributed helpers (``dist_*``),
TorchScript and TorchRec's FX tracer are left out.

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
from typing import Any, Optional, Union

import torch
from torch import Tensor

__all__ = ["JaggedError", "JaggedTensor", "KeyedJaggedTensor", "KeyedTensor", "as_kjt"]


class JaggedError(ValueError, AssertionError):
    """Invalid jagged input: a ``ValueError``, and an ``AssertionError`` too, because TorchRec's
    classes assert where these raise, so code written for them catches it as before."""


class _Traceable(type):
    """Makes building one of these classes from a ``torch.fx`` Proxy a node of the traced
    graph (its result a Proxy), as ``torch.fx.ProxyableClassMeta`` does, with a scan of the
    arguments cheap enough for every eager call (and one level into tuples, for
    ``inverse_indices``)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        for a in itertools.chain(args, kwargs.values()):
            if isinstance(a, torch.fx.Proxy):
                return a.tracer.create_proxy("call_function", cls, args, kwargs)
            if isinstance(a, tuple):
                for b in a:
                    if isinstance(b, torch.fx.Proxy):
                        return b.tracer.create_proxy("call_function", cls, args, kwargs)
        return super().__call__(*args, **kwargs)


def _cumsum(counts: list[int]) -> list[int]:
    """``[0, c0, c0 + c1, ...]``: where each of ``counts`` starts, then the total."""
    return [0, *itertools.accumulate(counts)]


def _to_offsets(lengths: Tensor) -> Tensor:
    """``[n + 1]`` boundaries from ``[n]`` lengths, in the lengths' dtype."""
    out = torch.zeros(lengths.numel() + 1, dtype=lengths.dtype, device=lengths.device)
    if lengths.numel():
        torch.cumsum(lengths.reshape(-1), 0, out=out[1:])
    return out


def _check_integers(t: Optional[Tensor], name: str) -> None:
    # Only real tensors: under torch.fx tracing these are proxies, which cannot be asked.
    if isinstance(t, Tensor) and t.numel() and (t.is_floating_point() or t.is_complex()
                                                or t.dtype == torch.bool):
        raise JaggedError(f"{name} must be of integer type, but got {t.dtype}")


def _values_string(values: Tensor, start: int, end: int) -> str:
    if values.dim() > 2:
        raise JaggedError("the values dimension is larger than 2, which has no printed form")
    if values.dim() == 1:
        return "[" + ", ".join(str(v.item()) for v in values[start:end]) + "]"
    return "[" + ", ".join("[" + ", ".join(str(s.item()) for s in row) + "]"
                           for row in values[start:end]) + "]"


def _jagged_string(values: Tensor, offsets: Tensor, first: int, last: int) -> str:
    bounds = offsets.tolist()
    return "[" + ", ".join(_values_string(values, bounds[i], bounds[i + 1])
                           for i in range(first, last)) + "]"


class JaggedTensor(metaclass=_Traceable):
    """One key's ids for a batch: ``values`` ``[L]`` (or ``[L, ...]``) split into bags by
    ``lengths`` ``[B]`` or ``offsets`` ``[B + 1]``, with optional per-id ``weights`` ``[L]``
    (TorchRec's ``JaggedTensor``).

    Raises:
        JaggedError: neither lengths nor offsets, or non-integer ones.

    Example::

        >>> jt = JaggedTensor(torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 0, 1]))
        >>> jt.offsets(), jt.to_padded_dense()
        (tensor([0, 2, 2, 3]), tensor([[1, 2],
                [0, 0],
                [3, 0]]))
    """

    def __init__(self, values: Tensor, weights: Optional[Tensor] = None,
                 lengths: Optional[Tensor] = None, offsets: Optional[Tensor] = None) -> None:
        if lengths is None and offsets is None:
            raise JaggedError("a JaggedTensor needs its lengths or its offsets")
        _check_integers(lengths, "lengths")
        _check_integers(offsets, "offsets")
        self._values, self._weights = values, weights
        self._lengths, self._offsets = lengths, offsets

    @staticmethod
    def empty(is_weighted: bool = False, device: Optional[torch.device] = None,
              values_dtype: Optional[torch.dtype] = None,
              weights_dtype: Optional[torch.dtype] = None,
              lengths_dtype: torch.dtype = torch.int32) -> JaggedTensor:
        weights = torch.empty(0, dtype=weights_dtype, device=device) if is_weighted else None
        return JaggedTensor(torch.empty(0, dtype=values_dtype, device=device), weights,
                            lengths=torch.empty(0, dtype=lengths_dtype, device=device),
                            offsets=torch.empty(0, dtype=lengths_dtype, device=device))

    @staticmethod
    def from_dense_lengths(values: Tensor, lengths: Tensor,
                           weights: Optional[Tensor] = None) -> JaggedTensor:
        """From padded ``values`` ``[B, N]``: the first ``lengths[b]`` of row ``b``."""
        mask = torch.arange(values.size(1), device=values.device).expand(
            values.size(0), -1) < lengths.unsqueeze(-1)
        return JaggedTensor(values[mask], _optional_mask(weights, mask), lengths=lengths)

    @staticmethod
    def from_dense(values: list[Tensor], weights: Optional[list[Tensor]] = None
                   ) -> JaggedTensor:
        """From one tensor per bag."""
        flat = torch.cat(values, dim=0)
        lengths = torch.tensor([v.size(0) for v in values], dtype=torch.int32,
                               device=flat.device)
        return JaggedTensor(flat, None if weights is None else torch.cat(weights, dim=0),
                            lengths=lengths)

    def _bags(self, data: Tensor) -> list[Tensor]:
        bounds = self.offsets().tolist()
        return [data[bounds[b]:bounds[b + 1]] for b in range(len(bounds) - 1)]

    def to_dense(self) -> list[Tensor]:
        """One tensor per bag."""
        return self._bags(self._values)

    def to_dense_weights(self) -> Optional[list[Tensor]]:
        return None if self._weights is None else self._bags(self._weights)

    def _padded(self, data: Tensor, desired_length: Optional[int],
                padding_value: float) -> Tensor:
        lengths = self.lengths().long()
        width = (int(lengths.max()) if lengths.numel() else 0) if desired_length is None \
            else desired_length
        out = torch.full((lengths.numel(), width, *data.shape[1:]), padding_value,
                         dtype=data.dtype, device=data.device)
        starts = self.offsets().long()[:-1]
        pos = torch.arange(width, device=data.device)
        keep = pos[None, :] < lengths[:, None]
        out[keep] = data[(starts[:, None] + pos[None, :])[keep]]
        return out

    def to_padded_dense(self, desired_length: Optional[int] = None,
                        padding_value: float = 0.0) -> Tensor:
        """``[B, N]`` (N the longest bag, or ``desired_length``: longer bags are cut)."""
        return self._padded(self._values, desired_length, padding_value)

    def to_padded_dense_weights(self, desired_length: Optional[int] = None,
                                padding_value: float = 0.0) -> Optional[Tensor]:
        return None if self._weights is None else \
            self._padded(self._weights, desired_length, padding_value)

    def device(self) -> torch.device:
        return self._values.device

    def values(self) -> Tensor:
        return self._values

    def weights(self) -> Tensor:
        if self._weights is None:
            raise JaggedError("this JaggedTensor has no weights")
        return self._weights

    def weights_or_none(self) -> Optional[Tensor]:
        return self._weights

    def lengths(self) -> Tensor:
        if self._lengths is None:
            assert self._offsets is not None
            self._lengths = torch.diff(self._offsets)
        return self._lengths

    def lengths_or_none(self) -> Optional[Tensor]:
        return self._lengths

    def offsets(self) -> Tensor:
        """``[B + 1]`` bag boundaries."""
        if self._offsets is None:
            assert self._lengths is not None
            self._offsets = _to_offsets(self._lengths)
        return self._offsets

    def offsets_or_none(self) -> Optional[Tensor]:
        return self._offsets

    def to(self, device: torch.device, non_blocking: bool = False) -> JaggedTensor:
        def move(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)
        return JaggedTensor(self._values.to(device, non_blocking=non_blocking),
                            move(self._weights), move(self._lengths), move(self._offsets))

    def record_stream(self, stream: Any) -> None:
        for t in (self._values, self._weights, self._lengths, self._offsets):
            if t is not None:
                t.record_stream(stream)

    def size_in_bytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (
            self._values, self._weights, self._lengths, self._offsets) if t is not None)

    def __str__(self) -> str:
        offsets = self.offsets()
        n = len(offsets) - 1
        if self._weights is None:
            return ("JaggedTensor({\n    " + _jagged_string(self._values, offsets, 0, n)
                    + "\n})\n")
        return ('JaggedTensor({\n    "values": ' + _jagged_string(self._values, offsets, 0, n)
                + ',\n    "weights": ' + _jagged_string(self._weights, offsets, 0, n)
                + "\n})\n")

    __repr__ = __str__


class KeyedJaggedTensor(metaclass=_Traceable):
    """Ids of K keys for a batch, key-major (TorchRec's ``KeyedJaggedTensor``).

    Args:
        keys: the K key (feature) names.
        values: ``[L]`` ids of every key, key-major.
        weights: optional ``[L]`` per-id weights (weighted features).
        lengths: ids per (key, sample), ``[sum of the keys' batch sizes]``; or ``offsets``
            (one more entry, starting at 0).
        stride: the batch size B; inferred when not given.
        stride_per_key_per_rank: variable batch: each key's batch size (``[[B_k]]``, one
            column per rank; the sum over ranks is the key's batch).
        inverse_indices: variable batch: ``(keys, [K, B] int tensor)`` mapping each key's
            deduplicated samples back to the B samples of the batch, for the pooled output.
        stride_per_key, length_per_key, lengths_offset_per_key, offset_per_key,
            index_per_key, jt_dict: precomputed metadata (computed lazily when not given).

    Raises:
        JaggedError: non-integer lengths or offsets; sizes that do not add up, when used.

    Example::

        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([4, 5, 6]),
        ...                                           torch.tensor([1, 0, 0, 2]))
        >>> kjt.offsets(), kjt.offset_per_key()
        (tensor([0, 1, 1, 1, 3]), [0, 1, 3])
    """

    def __init__(
        self,
        keys: list[str],
        values: Tensor,
        weights: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
        offsets: Optional[Tensor] = None,
        stride: Optional[int] = None,
        stride_per_key_per_rank: Optional[Union[Tensor, list[list[int]]]] = None,
        stride_per_key: Optional[list[int]] = None,
        length_per_key: Optional[list[int]] = None,
        lengths_offset_per_key: Optional[list[int]] = None,
        offset_per_key: Optional[list[int]] = None,
        index_per_key: Optional[dict[str, int]] = None,
        jt_dict: Optional[dict[str, JaggedTensor]] = None,
        inverse_indices: Optional[tuple[list[str], Tensor]] = None,
    ) -> None:
        # As TorchRec's, the constructor only stores (and checks the integer dtypes): sizes
        # are checked where they are used, with a JaggedError.
        _check_integers(lengths, "lengths")
        _check_integers(offsets, "offsets")
        self._keys = list(keys)
        self._values, self._weights = values, weights
        self._lengths, self._offsets = lengths, offsets
        self._stride = stride
        if isinstance(stride_per_key_per_rank, list):
            stride_per_key_per_rank = torch.tensor(stride_per_key_per_rank, dtype=torch.int32)
        self._stride_per_key_per_rank = stride_per_key_per_rank
        self._stride_per_key = stride_per_key
        self._length_per_key = length_per_key
        self._lengths_offset_per_key = lengths_offset_per_key
        self._offset_per_key = offset_per_key
        self._index_per_key = index_per_key
        self._jt_dict = jt_dict
        self._inverse_indices = inverse_indices

    # ---------------------------------------------------------------------------- building

    @staticmethod
    def from_offsets_sync(keys: list[str], values: Tensor, offsets: Tensor,
                          weights: Optional[Tensor] = None, stride: Optional[int] = None,
                          stride_per_key_per_rank: Optional[list[list[int]]] = None,
                          inverse_indices: Optional[tuple[list[str], Tensor]] = None
                          ) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys, values, weights, offsets=offsets, stride=stride,
                                 stride_per_key_per_rank=stride_per_key_per_rank,
                                 inverse_indices=inverse_indices).sync()

    @staticmethod
    def from_lengths_sync(keys: list[str], values: Tensor, lengths: Tensor,
                          weights: Optional[Tensor] = None, stride: Optional[int] = None,
                          stride_per_key_per_rank: Optional[list[list[int]]] = None,
                          inverse_indices: Optional[tuple[list[str], Tensor]] = None
                          ) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys, values, weights, lengths=lengths, stride=stride,
                                 stride_per_key_per_rank=stride_per_key_per_rank,
                                 inverse_indices=inverse_indices).sync()

    @staticmethod
    def from_jt_dict(jt_dict: dict[str, JaggedTensor], force_variable_stride: bool = False
                     ) -> KeyedJaggedTensor:
        """Concatenate per-key JaggedTensors; keys of different batch sizes (or
        ``force_variable_stride``) make a variable-batch KeyedJaggedTensor."""
        jts = list(jt_dict.values())
        weighted = [jt.weights_or_none() is not None for jt in jts]
        if any(weighted) and not all(weighted):
            raise JaggedError("either every JaggedTensor has weights or none has")
        strides = [int(jt.lengths().numel()) for jt in jts]
        uniform = all(s == strides[0] for s in strides) and not force_variable_stride
        return KeyedJaggedTensor(
            list(jt_dict), torch.cat([jt.values() for jt in jts]),
            torch.cat([jt.weights() for jt in jts]) if jts and all(weighted) else None,
            lengths=torch.cat([jt.lengths() for jt in jts]),
            stride=strides[0] if uniform else None,
            stride_per_key_per_rank=None if uniform else
            torch.tensor(strides, dtype=torch.int32).reshape(-1, 1)).sync()

    @staticmethod
    def concat(kjt_list: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
        """The keys of several KeyedJaggedTensors of one batch, side by side."""
        return _concat(kjt_list)

    @staticmethod
    def empty(is_weighted: bool = False, device: Optional[torch.device] = None,
              values_dtype: Optional[torch.dtype] = None,
              weights_dtype: Optional[torch.dtype] = None,
              lengths_dtype: torch.dtype = torch.int32) -> KeyedJaggedTensor:
        weights = torch.empty(0, dtype=weights_dtype, device=device) if is_weighted else None
        return KeyedJaggedTensor([], torch.empty(0, dtype=values_dtype, device=device), weights,
                                 lengths=torch.empty(0, dtype=lengths_dtype, device=device),
                                 stride=0)

    @staticmethod
    def empty_like(kjt: KeyedJaggedTensor, device: Optional[torch.device] = None
                   ) -> KeyedJaggedTensor:
        """No ids, the same keys, batch and dtypes (on ``device`` when given)."""
        device = kjt.device() if device is None else device
        w = kjt.weights_or_none()
        variable = kjt.variable_stride_per_key()
        return KeyedJaggedTensor(
            kjt.keys(), torch.empty(0, dtype=kjt.values().dtype, device=device),
            None if w is None else torch.empty(0, dtype=w.dtype, device=device),
            lengths=torch.zeros(sum(kjt.stride_per_key()), dtype=kjt.lengths().dtype,
                                device=device),
            stride=None if variable else kjt.stride(),
            stride_per_key_per_rank=kjt._stride_per_key_per_rank if variable else None)

    def copy_(self, kjt: KeyedJaggedTensor, non_blocking: bool = False) -> KeyedJaggedTensor:
        """Copy ``kjt``'s tensors into this one's (of the same sizes) and take its metadata."""
        self._stride_per_key_per_rank = kjt._stride_per_key_per_rank \
            if kjt.variable_stride_per_key() else None
        for name in ("_length_per_key", "_lengths_offset_per_key", "_offset_per_key",
                     "_index_per_key", "_stride_per_key", "_jt_dict"):
            setattr(self, name, getattr(kjt, name))
        for name in ("_values", "_weights", "_lengths", "_offsets"):
            mine, theirs = getattr(self, name), getattr(kjt, name)
            if mine is not None and theirs is not None:
                mine.copy_(theirs, non_blocking=non_blocking)
        return self

    def sync(self) -> KeyedJaggedTensor:
        """Compute the per-key lengths and offsets now (one host sync)."""
        self.length_per_key()
        self.offset_per_key()
        return self

    def unsync(self) -> KeyedJaggedTensor:
        self._length_per_key = None
        self._offset_per_key = None
        return self

    # ---------------------------------------------------------------------------- accessors

    def device(self) -> torch.device:
        return self._values.device

    def keys(self) -> list[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def weights(self) -> Tensor:
        if self._weights is None:
            raise JaggedError("this KeyedJaggedTensor has no weights")
        return self._weights

    def weights_or_none(self) -> Optional[Tensor]:
        return self._weights

    def lengths(self) -> Tensor:
        if self._lengths is None:
            if self._offsets is None:
                raise JaggedError("this KeyedJaggedTensor has neither lengths nor offsets")
            self._lengths = torch.diff(self._offsets)
        return self._lengths

    def lengths_or_none(self) -> Optional[Tensor]:
        return self._lengths

    def offsets(self) -> Tensor:
        if self._offsets is None:
            self._offsets = _to_offsets(self.lengths())
        return self._offsets

    def offsets_or_none(self) -> Optional[Tensor]:
        return self._offsets

    def stride(self) -> int:
        """The batch size B (the largest key's, for a variable batch)."""
        if self._stride is None:
            spkpr, inv = self._stride_per_key_per_rank, self._inverse_indices
            if not self._keys:
                self._stride = 0
            elif spkpr is not None and spkpr.numel() > 0:
                if inv is not None and inv[1].numel() > 0:
                    return int(inv[1].shape[-1])
                self._stride = int(spkpr.sum(dim=1).max())
            elif self._offsets is not None and self._offsets.numel() > 0:
                self._stride = (self._offsets.numel() - 1) // len(self._keys)
            elif self._lengths is not None:
                self._stride = self._lengths.numel() // len(self._keys)
            else:
                self._stride = 0
        return self._stride

    def stride_per_key(self) -> list[int]:
        if self._stride_per_key is None:
            spkpr = self._stride_per_key_per_rank
            if spkpr is not None:
                self._stride_per_key = spkpr.sum(dim=1).tolist() if spkpr.dim() == 2 else []
            else:
                self._stride_per_key = [self.stride()] * len(self._keys)
        return self._stride_per_key

    def stride_per_key_per_rank(self) -> list[list[int]]:
        spkpr = self._stride_per_key_per_rank
        return [] if spkpr is None else spkpr.tolist()

    def variable_stride_per_key(self) -> bool:
        return self._stride_per_key_per_rank is not None

    def inverse_indices(self) -> tuple[list[str], Tensor]:
        if self._inverse_indices is None:
            raise JaggedError("this KeyedJaggedTensor has no inverse indices")
        return self._inverse_indices

    def inverse_indices_or_none(self) -> Optional[tuple[list[str], Tensor]]:
        return self._inverse_indices

    def length_per_key(self) -> list[int]:
        """How many ids each key has."""
        if self._length_per_key is None:
            k = len(self._keys)
            self.stride()  # computed (and kept) first, as TorchRec's
            if k and self._values.is_meta:
                # No data on the meta device: split the ids evenly (TorchRec's rule).
                total = self._values.numel()
                per_key = [total // k] * k
                per_key[0] += total % k
            elif k and (self._lengths is not None or self._offsets is not None):
                lengths = self.lengths()
                if self.variable_stride_per_key():
                    per_key = [int(c.sum()) for c in torch.split(lengths, self.stride_per_key())]
                elif lengths.numel():
                    stride = self.stride()
                    if lengths.numel() != k * stride:
                        raise JaggedError(f"{lengths.numel()} lengths for {k} keys of batch "
                                          f"{stride}")
                    per_key = lengths.reshape(k, stride).sum(dim=1).tolist()
                else:
                    per_key = [0] * k
            else:
                per_key = []
            self._length_per_key = [int(n) for n in per_key]
        return self._length_per_key

    def length_per_key_or_none(self) -> Optional[list[int]]:
        return self._length_per_key

    def offset_per_key(self) -> list[int]:
        """Where each key's ids start in ``values``, then the total."""
        if self._offset_per_key is None:
            self._offset_per_key = _cumsum(self.length_per_key())
        return self._offset_per_key

    def offset_per_key_or_none(self) -> Optional[list[int]]:
        return self._offset_per_key

    def lengths_offset_per_key(self) -> list[int]:
        """Where each key's lengths start in ``lengths``, then the total."""
        if self._lengths_offset_per_key is None:
            self._lengths_offset_per_key = _cumsum(self.stride_per_key())
        return self._lengths_offset_per_key

    def index_per_key(self) -> dict[str, int]:
        if self._index_per_key is None:
            self._index_per_key = {key: i for i, key in enumerate(self._keys)}
        return self._index_per_key

    # ------------------------------------------------------------------------- reshaping

    def _like(self, keys: list[str], values: Tensor, weights: Optional[Tensor],
              lengths: Tensor, spkpr: Optional[Tensor],
              length_per_key: Optional[list[int]], stride_per_key: Optional[list[int]] = None
              ) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys, values, weights, lengths=lengths, stride=self._stride,
                                 stride_per_key_per_rank=spkpr, stride_per_key=stride_per_key,
                                 length_per_key=length_per_key)

    def split(self, segments: list[int]) -> list[KeyedJaggedTensor]:
        """Consecutive groups of ``segments[i]`` keys, each its own KeyedJaggedTensor."""
        if sum(segments) != len(self._keys) or any(s < 0 for s in segments):
            raise JaggedError(f"segments {segments} do not split {len(self._keys)} keys")
        out: list[KeyedJaggedTensor] = []
        lpk, opk, lopk = self.length_per_key(), self.offset_per_key(), \
            self.lengths_offset_per_key()
        spkpr = self._stride_per_key_per_rank if self.variable_stride_per_key() else None
        start = 0
        for segment in segments:
            end = start + segment
            if segment == len(self._keys):
                out.append(self)
            elif segment == 0:  # TorchRec's empty part: int32 lengths and offsets
                w = self._weights
                empty = torch.empty(0, dtype=torch.int32, device=self.device())
                out.append(KeyedJaggedTensor(
                    [], self._values[:0], None if w is None else w[:0], lengths=empty,
                    offsets=empty, stride=self._stride,
                    stride_per_key_per_rank=None if spkpr is None else spkpr[start:end, :]))
            else:
                w = self._weights
                lengths = self.lengths()
                out.append(self._like(
                    self._keys[start:end], self._values[opk[start]:opk[end]],
                    None if w is None else w[opk[start]:opk[end]],
                    lengths[lopk[start]:lopk[end]],
                    None if spkpr is None else spkpr[start:end, :], lpk[start:end]))
            start = end
        return out

    def permute(self, indices: list[int], indices_tensor: Optional[Tensor] = None
                ) -> KeyedJaggedTensor:
        """The keys in the order ``indices`` (a key may appear more than once, or not)."""
        k = len(self._keys)
        if any(not 0 <= i < k for i in indices):
            raise JaggedError(f"permute indices {indices} out of range for {k} keys")
        lpk, opk, lopk = self.length_per_key(), self.offset_per_key(), \
            self.lengths_offset_per_key()
        lengths, w = self.lengths(), self._weights

        def take(t: Tensor, bounds: list[int]) -> Tensor:
            parts = [t[bounds[i]:bounds[i + 1]] for i in indices]
            return torch.cat(parts) if parts else t[:0]

        spkpr = self._stride_per_key_per_rank
        spk = self._stride_per_key
        return self._like(
            [self._keys[i] for i in indices], take(self._values, opk),
            None if w is None else take(w, opk), take(lengths, lopk),
            spkpr[indices, :] if self.variable_stride_per_key() and spkpr is not None else None,
            [lpk[i] for i in indices] if indices else None,
            None if spk is None else [spk[i] for i in indices])

    def flatten_lengths(self) -> KeyedJaggedTensor:
        return self._like(self._keys, self._values, self._weights, self.lengths().reshape(-1),
                          self._stride_per_key_per_rank if self.variable_stride_per_key()
                          else None, self.length_per_key())

    def __getitem__(self, key: str) -> JaggedTensor:
        index = self.index_per_key()[key]
        opk, lopk = self.offset_per_key(), self.lengths_offset_per_key()
        start = opk[index]
        end = opk[index + 1] if index + 1 < len(opk) else start
        w = self._weights
        return JaggedTensor(self._values[start:end], None if w is None else w[start:end],
                            lengths=self.lengths()[lopk[index]:lopk[index + 1]])

    def to_dict(self, compute_offsets: bool = True) -> dict[str, JaggedTensor]:
        """Each key's JaggedTensor (cached)."""
        if self._jt_dict is None:
            lpk = self.length_per_key()
            if not lpk:
                return {}
            values = torch.split(self._values, lpk)
            weights = None if self._weights is None else torch.split(self._weights, lpk)
            all_lengths = self.lengths()
            if self.variable_stride_per_key():
                lengths = torch.split(all_lengths, self.stride_per_key())
            elif all_lengths.numel():
                lengths = all_lengths.view(len(self._keys), self.stride()).unbind(0)
            else:
                lengths = tuple(all_lengths.new_zeros(0) for _ in self._keys)
            self._jt_dict = {
                key: JaggedTensor(values[i], None if weights is None else weights[i],
                                  lengths=lengths[i],
                                  offsets=_to_offsets(lengths[i]) if compute_offsets else None)
                for i, key in enumerate(self._keys)}
        return self._jt_dict

    def to(self, device: torch.device, non_blocking: bool = False,
           dtype: Optional[torch.dtype] = None) -> KeyedJaggedTensor:
        """On ``device``; ``dtype`` converts the weights."""
        def move(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)
        w = self._weights
        if w is not None:
            w = w.to(device=device, dtype=dtype, non_blocking=non_blocking)
        inv = self._inverse_indices
        return KeyedJaggedTensor(
            self._keys, self._values.to(device, non_blocking=non_blocking), w,
            move(self._lengths), move(self._offsets), self._stride,
            self._stride_per_key_per_rank if self.variable_stride_per_key() else None,
            self._stride_per_key, self._length_per_key, self._lengths_offset_per_key,
            self._offset_per_key, self._index_per_key, self._jt_dict,
            None if inv is None else (inv[0], inv[1].to(device, non_blocking=non_blocking)))

    def pin_memory(self) -> KeyedJaggedTensor:
        def pin(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.pin_memory()
        return KeyedJaggedTensor(
            self._keys, self._values.pin_memory(), pin(self._weights), pin(self._lengths),
            pin(self._offsets), self._stride, self._stride_per_key_per_rank,
            self._stride_per_key, self._length_per_key, self._lengths_offset_per_key,
            self._offset_per_key, self._index_per_key, None, self._inverse_indices)

    def record_stream(self, stream: Any) -> None:
        for t in (self._values, self._weights, self._lengths, self._offsets):
            if t is not None:
                t.record_stream(stream)

    def size_in_bytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (
            self._values, self._weights, self._lengths, self._offsets,
            self._stride_per_key_per_rank) if t is not None)

    def __str__(self) -> str:
        if not self._keys or (self._offsets is None and self._lengths is None):
            return "KeyedJaggedTensor()\n"
        offsets, spk = self.offsets(), self.stride_per_key()
        parts = []
        for i, key in enumerate(self._keys):
            first, last = sum(spk[:i]), sum(spk[:i + 1])
            if self._weights is None:
                parts.append(f'    "{key}": ' + _jagged_string(self._values, offsets, first,
                                                               last))
            else:
                parts.append(f'    "{key}": {{\n        "values": '
                             + _jagged_string(self._values, offsets, first, last)
                             + ',\n        "weights": '
                             + _jagged_string(self._weights, offsets, first, last) + "\n    }")
        return "KeyedJaggedTensor({\n" + ",\n".join(parts) + "\n})\n"

    __repr__ = __str__


class KeyedTensor(metaclass=_Traceable):
    """Pooled outputs of several keys side by side (TorchRec's ``KeyedTensor``): key ``k``
    spans ``length_per_key[k]`` positions of dimension ``key_dim`` of ``values`` (by default
    the columns of ``[B, sum(D_k)]``).

    Example::

        >>> kt = KeyedTensor(["a", "b"], [2, 1], torch.arange(6.0).reshape(2, 3))
        >>> kt["b"]
        tensor([[2.],
                [5.]])
        >>> [t.shape for t in KeyedTensor.regroup([kt], [["b", "a"], ["a"]])]
        [torch.Size([2, 3]), torch.Size([2, 2])]
    """

    def __init__(self, keys: list[str], length_per_key: list[int], values: Tensor,
                 key_dim: int = 1, offset_per_key: Optional[list[int]] = None,
                 index_per_key: Optional[dict[str, int]] = None) -> None:
        if len(keys) != len(length_per_key):
            raise JaggedError(f"{len(keys)} keys but {len(length_per_key)} lengths")
        self._keys, self._length_per_key, self._values = list(keys), list(length_per_key), values
        self._key_dim = key_dim
        self._offset_per_key = offset_per_key
        self._index_per_key = index_per_key

    @staticmethod
    def from_tensor_list(keys: list[str], tensors: list[Tensor], key_dim: int = 1,
                         cat_dim: int = 1) -> KeyedTensor:
        return KeyedTensor(keys, [t.shape[key_dim] for t in tensors],
                           torch.cat(tensors, dim=cat_dim), key_dim)

    def keys(self) -> list[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def key_dim(self) -> int:
        return self._key_dim

    def device(self) -> torch.device:
        return self._values.device

    def length_per_key(self) -> list[int]:
        return self._length_per_key

    def offset_per_key(self) -> list[int]:
        if self._offset_per_key is None:
            self._offset_per_key = _cumsum(self._length_per_key)
        return self._offset_per_key

    def _key_indices(self) -> dict[str, int]:
        if self._index_per_key is None:
            self._index_per_key = {key: i for i, key in enumerate(self._keys)}
        return self._index_per_key

    def __getitem__(self, key: str) -> Tensor:
        index = self._key_indices()[key]
        return self._values.narrow(self._key_dim, self.offset_per_key()[index],
                                   self._length_per_key[index])

    def to_dict(self) -> dict[str, Tensor]:
        parts = self._values.split(self._length_per_key, dim=self._key_dim)
        return {key: parts[i] for key, i in self._key_indices().items()}

    @staticmethod
    def regroup(keyed_tensors: list[KeyedTensor], groups: list[list[str]]) -> list[Tensor]:
        """One tensor per group: its keys' blocks, from any of ``keyed_tensors``, side by
        side in the group's order (a key may appear in several groups)."""
        return _regroup(keyed_tensors, groups)

    @staticmethod
    def regroup_as_dict(keyed_tensors: list[KeyedTensor], groups: list[list[str]],
                        keys: list[str]) -> dict[str, Tensor]:
        return _regroup_as_dict(keyed_tensors, groups, keys)

    def to(self, device: torch.device, non_blocking: bool = False) -> KeyedTensor:
        return KeyedTensor(self._keys, self._length_per_key,
                           self._values.to(device, non_blocking=non_blocking), self._key_dim,
                           self._offset_per_key, self._index_per_key)

    def record_stream(self, stream: Any) -> None:
        self._values.record_stream(stream)

    def size_in_bytes(self) -> int:
        return self._values.element_size() * self._values.numel()

    def __str__(self) -> str:
        if not self._keys:
            return "KeyedTensor()\n"
        rows = [f'    "{key}": [' + ", ".join(_values_string(v, 0, len(v)) for v in self[key])
                + "]" for key in self._keys]
        return "KeyedTensor({\n" + ",\n".join(rows) + "\n})\n"

    __repr__ = __str__


# --------------------------------------------------------------------------------------------
# functions torch.fx records as single nodes (they look inside the objects, which a traced
# graph holds as proxies)


def _optional_mask(weights: Optional[Tensor], mask: Tensor) -> Optional[Tensor]:
    return None if weights is None else weights[mask]


def _regroup(keyed_tensors: list[KeyedTensor], groups: list[list[str]]) -> list[Tensor]:
    """:meth:`KeyedTensor.regroup`."""
    owner: dict[str, KeyedTensor] = {}
    for kt in keyed_tensors:
        for key in kt.keys():
            owner[key] = kt
    key_dim = keyed_tensors[0].key_dim()
    out = []
    for group in groups:
        missing = [k for k in group if k not in owner]
        if missing:
            raise KeyError(f"keys {missing} are in none of the KeyedTensors")
        out.append(torch.cat([owner[k][k] for k in group], dim=key_dim))
    return out


def _concat(kjt_list: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    """:meth:`KeyedJaggedTensor.concat`."""
    if not kjt_list:
        raise JaggedError("Can't concat empty KJT list")
    weighted = kjt_list[0].weights_or_none() is not None
    variable = [k.variable_stride_per_key() for k in kjt_list]
    if any(variable) and not all(variable):
        raise JaggedError("variable stride per key must be consistent for all KJTs")
    if any((k.weights_or_none() is not None) != weighted for k in kjt_list):
        raise JaggedError("Can't merge weighted KJT with unweighted KJT")
    stride = None
    if not variable[0]:
        strides = {k.stride() for k in kjt_list}
        if len(strides) != 1:
            raise JaggedError(f"strides must be consistent for all KJTs, got {strides}")
        stride = strides.pop()
    inverse = [k.inverse_indices_or_none() for k in kjt_list]
    if any(i is not None for i in inverse) and not all(i is not None for i in inverse):
        raise JaggedError("inverse indices must be consistent for all KJTs")
    lpk = [k._length_per_key for k in kjt_list]
    return KeyedJaggedTensor(
        [key for k in kjt_list for key in k.keys()],
        torch.cat([k.values() for k in kjt_list]),
        torch.cat([k.weights() for k in kjt_list]) if weighted else None,
        lengths=torch.cat([k.lengths() for k in kjt_list]),
        stride=stride,
        stride_per_key_per_rank=[row for k in kjt_list for row in k.stride_per_key_per_rank()]
        if variable[0] else None,
        length_per_key=None if any(x is None for x in lpk)
        else [n for x in lpk for n in x],  # type: ignore[union-attr]
        inverse_indices=None if inverse[0] is None else (
            [key for i in inverse for key in i[0]],  # type: ignore[index]
            torch.cat([i[1] for i in inverse])))  # type: ignore[index]


def _regroup_as_dict(keyed_tensors: list[KeyedTensor], groups: list[list[str]],
                     keys: list[str]) -> dict[str, Tensor]:
    """:meth:`KeyedTensor.regroup_as_dict`."""
    if len(groups) != len(keys):
        raise JaggedError("Groups and keys should have same length")
    return dict(zip(keys, _regroup(keyed_tensors, groups)))


torch.fx.wrap("_optional_mask")
torch.fx.wrap("_regroup_as_dict")
torch.fx.wrap("_regroup")
torch.fx.wrap("_concat")


def as_kjt(features: Any) -> KeyedJaggedTensor:
    """Our KeyedJaggedTensor from ours or from a ``torchrec.sparse.jagged_tensor`` one (read
    through its public accessors, so torchrec needs not be importable here)."""
    if isinstance(features, KeyedJaggedTensor):
        return features
    if all(hasattr(features, a) for a in ("keys", "values", "lengths", "weights_or_none",
                                          "stride")):
        variable = bool(getattr(features, "variable_stride_per_key", lambda: False)())
        inverse = getattr(features, "inverse_indices_or_none", lambda: None)()
        return KeyedJaggedTensor(
            features.keys(), features.values(), features.weights_or_none(),
            lengths=features.lengths(), stride=None if variable else features.stride(),
            stride_per_key_per_rank=features.stride_per_key_per_rank() if variable else None,
            inverse_indices=inverse)
    raise TypeError(f"expected a KeyedJaggedTensor, got {type(features).__name__}")


# --------------------------------------------------------------------------------------------
# pytree nodes, so torch.export and torch.utils._pytree see the tensors inside (as TorchRec's)


def _jt_children(jt: JaggedTensor) -> list[Optional[Tensor]]:
    return [jt._values, jt._weights, jt._lengths, jt._offsets]


def _kjt_children(kjt: KeyedJaggedTensor) -> list[Optional[Tensor]]:
    inverse = kjt._inverse_indices
    return [kjt._values, kjt._weights, kjt._lengths, kjt._offsets,
            kjt._stride_per_key_per_rank, None if inverse is None else inverse[1]]


def _kjt_context(kjt: KeyedJaggedTensor) -> tuple[list[str], Optional[list[str]]]:
    inverse = kjt._inverse_indices
    return kjt._keys, None if inverse is None else inverse[0]


def _kjt_rebuild(children: Any, context: Any) -> KeyedJaggedTensor:
    # A spec may stop before the variable-batch fields (TorchRec's older specs have 4).
    values, weights, lengths, offsets, spkpr, inverse = [*children, None, None][:6]
    keys, inverse_keys = context
    return KeyedJaggedTensor(keys, values, weights, lengths, offsets,
                             stride_per_key_per_rank=spkpr,
                             inverse_indices=None if inverse is None else (inverse_keys, inverse))


def _kt_context(kt: KeyedTensor) -> tuple[list[str], list[int], int]:
    return kt._keys, kt._length_per_key, kt._key_dim


def _register_pytree_nodes() -> None:
    from torch.fx._pytree import register_pytree_flatten_spec
    from torch.utils._pytree import GetAttrKey, register_pytree_node

    jt_names = ("_values", "_weights", "_lengths", "_offsets")
    register_pytree_node(
        JaggedTensor, lambda jt: (_jt_children(jt), None),
        lambda children, _: JaggedTensor(*children),
        flatten_with_keys_fn=lambda jt: (
            [(GetAttrKey(n), c) for n, c in zip(jt_names, _jt_children(jt))], None))
    register_pytree_flatten_spec(JaggedTensor, lambda jt, spec: _jt_children(jt))

    kjt_names = (*jt_names, "_stride_per_key_per_rank", "_inverse_indices")
    register_pytree_node(
        KeyedJaggedTensor, lambda kjt: (_kjt_children(kjt), _kjt_context(kjt)), _kjt_rebuild,
        flatten_with_keys_fn=lambda kjt: (
            [(GetAttrKey(n), c) for n, c in zip(kjt_names, _kjt_children(kjt))],
            _kjt_context(kjt)))

    def kjt_by_spec(kjt: KeyedJaggedTensor, spec: Any) -> list[Optional[Tensor]]:
        keys = spec.context[0]
        if kjt.keys() != keys:  # the spec's key order
            kjt = kjt.permute([kjt.index_per_key()[k] for k in keys])
        return _kjt_children(kjt)

    register_pytree_flatten_spec(KeyedJaggedTensor, kjt_by_spec)

    register_pytree_node(
        KeyedTensor, lambda kt: ([kt._values], _kt_context(kt)),
        lambda children, context: KeyedTensor(context[0], context[1], children[0], context[2]),
        flatten_with_keys_fn=lambda kt: ([(GetAttrKey("_values"), kt._values)],
                                         _kt_context(kt)))

    def kt_by_spec(kt: KeyedTensor, spec: Any) -> list[Tensor]:
        keys, _, key_dim = spec.context
        if kt.keys() == keys:
            return [kt._values]
        return [torch.cat([kt[k] for k in keys], dim=key_dim)]  # the spec's key order

    register_pytree_flatten_spec(KeyedTensor, kt_by_spec)


_register_pytree_nodes()
