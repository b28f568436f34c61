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
from pathlib import Path
from typing import Any, Optional, Union

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

    def _runner(self, slot_of: dict[int, int]) -> Any:
        """``expert(e, x)`` reading expert ``e``'s weights from its slot."""

        def expert(e: int, x: Tensor) -> Tensor:
            return expert_from_row(self._row(slot_of[e]), self._layout, x)

        return expert

    def run(self, layer: Any, tokens: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        """Dynamic gating over the buffered experts: the batch's experts are fetched in rounds
        of at most ``slots``, run from their slots, and released."""
        if self._gpu is not None:
            return self._gpu.run(layer, tokens, experts, weights)
        if self.cache is None:
            raise RuntimeError("the buffer is not bound to a layer (MoE(..., buffer=...))")
        cache = self.cache
        active = torch.unique(experts).tolist()
        out = torch.zeros_like(tokens)
        for round_ in cache.rounds(active):
            ids = round_.tolist()
            with cache.batch(ids) as slots:
                slot_of = dict(zip(ids, slots.tolist()))
                dispatch_dynamic(tokens, experts, weights, layer.num_experts,
                                 self._runner(slot_of), order=ids, out=out)
        return out

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
        self.layout = layer._layout
        self.copied = 0

    def run(self, layer: Any, tokens: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        active = torch.unique(experts).tolist()
        n = self.slots.shape[0]
        out = torch.zeros_like(tokens)
        main = torch.cuda.current_stream(tokens.device)
        for i in range(0, len(active), n):
            ids = active[i:i + n]
            slot_list, fills = self.directory.acquire(np.asarray(ids, dtype=np.int64))
            if fills:
                # Copy after the work already queued (it may still read the victims' slots).
                self.side.wait_stream(main)
                with torch.cuda.stream(self.side):
                    for e, k in fills:
                        self.slots[k].copy_(self.host[e], non_blocking=True)
                main.wait_stream(self.side)
                self.directory.loaded(fills)
                self.copied += len(fills) * self.slots.shape[1] * 4
            slot_of = dict(zip(ids, slot_list))

            def expert(e: int, x: Tensor, slot_of: dict[int, int] = slot_of) -> Tensor:
                return expert_from_row(self.slots[slot_of[e]], self.layout, x)

            dispatch_dynamic(tokens, experts, weights, layer.num_experts, expert, order=ids,
                             out=out)
            self.directory.release(np.asarray(ids, dtype=np.int64))
        return out

    def stats(self) -> dict[str, float]:
        s = dict(self.directory.stats())
        s["bytes_copied"] = self.copied
        return s
