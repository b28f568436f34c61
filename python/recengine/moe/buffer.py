"""``ExpertBuffer``: an MoE layer's experts served from a few fast slots (Expert Buffering).

On a CPU layer the slow tier is a memory-mapped file holding every expert's packed weights
(written when the buffer is bound to a layer) and the fast tier is the cache's arena in RAM
(:class:`recengine.cache.ExpertCache`); misses are copied by the core's threads. On a CUDA
layer the slow tier is pinned host memory and the fast tier ``slots`` rows on the GPU; misses
are copied on a side stream (which first waits for the work already queued, so a slot is not
overwritten while a kernel still reads it), and the compute stream waits for the copies; the
core's :class:`~recengine._core.CacheDirectory` keeps the books. The layer's own Parameters
stay the source of truth: after changing them, call :meth:`ExpertBuffer.refresh`.

Example::

    >>> import torch
    >>> from recengine.moe import ExpertBuffer, MoE
    >>> layer = MoE(16, 32, num_experts=8, buffer=ExpertBuffer(slots=4)).eval()
    >>> with torch.no_grad():
    ...     y = layer(torch.randn(20, 16))
    >>> layer.buffer.stats()["batches"] > 0
    True
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .. import _core
from ..cache import POLICIES, ExpertCache
from .layer import dispatch_dynamic, expert_from_row

__all__ = ["ExpertBuffer"]

PathLike = Union[str, "os.PathLike[str]"]


class ExpertBuffer:
    """``slots`` experts in fast memory, the rest in a slow tier (see the module's note).

    Args:
        slots: experts held in fast memory at once (>= 1).
        policy: the eviction policy (:data:`recengine.cache.POLICIES`).
        path: the slow tier's file; default: a temporary file, removed by :meth:`close` or
            when the buffer is garbage-collected.
        wait_s: how long a batch waits for slots other threads' batches pin.
    """

    def __init__(self, slots: int, policy: str = "inactive_lifo",
                 path: Optional[PathLike] = None, wait_s: float = 30.0) -> None:
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.slots, self.policy, self.wait_s = slots, policy, float(wait_s)
        self._path = None if path is None else Path(path)
        self._tmp: Optional[weakref.finalize] = None  # removes a temporary slow tier
        self.cache: Optional[ExpertCache] = None
        self._layout: dict[str, Any] = {}
        self._gpu: Optional[_GpuTier] = None

    @property
    def path(self) -> Optional[Path]:
        """The slow tier's file (None before the buffer is bound to a layer)."""
        return self._path

    def bind(self, layer: Any) -> None:
        """Pack ``layer``'s experts into the slow tier and make the cache over it."""
        self._layout = layer._layout
        if self.slots > layer.num_experts:
            warnings.warn(f"{self.slots} slots for {layer.num_experts} experts: the buffer "
                          "holds them all", RuntimeWarning, stacklevel=3)
        if layer.experts.device.type == "cuda":
            self._gpu = _GpuTier(layer, self.slots, self.policy)
            return
        if layer.experts.device.type != "cpu":
            raise NotImplementedError(f"no expert buffer for {layer.experts.device.type} "
                                      "layers (CPU and CUDA are served)")
        with torch.no_grad():
            packed = layer.experts.detach().float().contiguous().numpy().copy()
        if self._path is None:
            tmp = tempfile.mkdtemp(prefix="recengine-experts-")
            self._tmp = weakref.finalize(self, shutil.rmtree, tmp, ignore_errors=True)
            self._path = Path(tmp) / "experts.npy"
        np.save(self._path, packed)
        self.cache = ExpertCache.from_npy(self._path, self.slots, self.policy, self.wait_s)

    def refresh(self, layer: Any) -> None:
        """Rewrite the slow tier from ``layer``'s current weights (a new cache, fresh stats)."""
        self.cache = None
        self._gpu = None
        self.bind(layer)

    def _row(self, slot: int) -> Tensor:
        """The packed weights in ``slot`` (a read-only view of the cache's memory)."""
        assert self.cache is not None
        row = self.cache.view(np.float32, (self._layout["size"],))[slot]
        with warnings.catch_warnings():
            # The slot is only read: torch's warning about non-writable arrays is moot.
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(row)

    @contextmanager
    def _hold(self, ids: list[int]) -> Iterator[Callable[[int], Tensor]]:
        """Fetch ``ids`` into the cache for the block; yield expert id -> its packed row."""
        assert self.cache is not None
        with self.cache.batch(ids) as slots:
            slot_of = dict(zip(ids, slots.tolist()))
            yield lambda e: self._row(slot_of[e])

    def run(self, layer: Any, tokens: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        """Dynamic gating over the buffered experts: the batch's experts are fetched in rounds
        of at most ``slots``, run from their slots, and released."""
        if self._gpu is not None:
            return run_rounds(layer, tokens, experts, weights, self.slots, self._gpu.hold)
        if self.cache is None:
            raise RuntimeError("the buffer is not bound to a layer (MoE(..., buffer=...))")
        return run_rounds(layer, tokens, experts, weights, self.slots, self._hold)

    def stats(self) -> dict[str, float]:
        """The cache's counters (hits, misses, bytes copied, copy seconds, miss rate ...)."""
        if self._gpu is not None:
            return self._gpu.stats()
        return {} if self.cache is None else self.cache.stats()

    def fast_bytes(self) -> int:
        """Bytes of expert weights in fast memory: slots x one expert."""
        return self.slots * self._layout.get("size", 0) * 4 if (
            self.cache is not None or self._gpu is not None) else 0

    def close(self) -> None:
        """Drop the cache and remove a temporary slow-tier file."""
        self.cache = None
        self._gpu = None
        if self._tmp is not None:
            self._tmp()
            self._tmp = None
            self._path = None


class _GpuTier:
    """A CUDA layer's buffer: packed experts in pinned host memory, ``slots`` rows on the GPU,
    misses copied on a side stream, the core's directory for the bookkeeping."""

    def __init__(self, layer: Any, slots: int, policy: str) -> None:
        device = layer.experts.device
        with torch.no_grad():
            rows = layer.experts.detach().float()
        self.host = torch.empty(rows.shape, dtype=torch.float32, pin_memory=True)
        self.host.copy_(rows)
        self.slots = torch.empty((slots, rows.shape[1]), dtype=torch.float32, device=device)
        self.directory = _core.CacheDirectory(slots, rows.shape[0], policy)
        self.side = torch.cuda.Stream(device=device)
        self.copied = 0

    @contextmanager
    def hold(self, ids: list[int]) -> Iterator[Callable[[int], Tensor]]:
        """Make ``ids`` resident in the GPU slots for the block (misses copied on the side
        stream); yield expert id -> its packed row."""
        key = np.asarray(ids, dtype=np.int64)
        slot_list, fills = self.directory.acquire(key)
        try:
            if fills:
                main = torch.cuda.current_stream(self.slots.device)
                # Copy after the work already queued (it may still read the victims' slots).
                self.side.wait_stream(main)
                with torch.cuda.stream(self.side):
                    for e, k in fills:
                        self.slots[k].copy_(self.host[e], non_blocking=True)
                main.wait_stream(self.side)
                self.directory.loaded(fills)
                self.copied += len(fills) * self.slots.shape[1] * 4
            slot_of = dict(zip(ids, slot_list))
            yield lambda e: self.slots[slot_of[e]]
        finally:
            self.directory.release(key)

    def stats(self) -> dict[str, float]:
        s = dict(self.directory.stats())
        s["bytes_copied"] = self.copied
        return s


def run_rounds(layer: Any, tokens: Tensor, experts: Tensor, weights: Tensor, slots: int,
               hold: Callable[[list[int]], Any]) -> Tensor:
    """Dynamic gating with the batch's experts (ascending) in rounds of at most ``slots``:
    ``hold(ids)`` makes a round resident for a ``with`` block and gives expert id -> packed
    row. All rounds add into one output, in expert order, so the sums are those of one call."""
    active = torch.unique(experts).tolist()
    out = torch.zeros_like(tokens)
    for i in range(0, len(active), slots):
        ids = active[i:i + slots]
        with hold(ids) as row:

            def expert(e: int, x: Tensor, row: Callable[[int], Tensor] = row) -> Tensor:
                return expert_from_row(row(e), layer._layout, x)

            dispatch_dynamic(tokens, experts, weights, layer.num_experts, expert, order=ids,
                             out=out)
    return out
