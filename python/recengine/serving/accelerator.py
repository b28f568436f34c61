"""Where offloaded queries run: a real CUDA device, or a latency model of one (DeepRecSys: the
public DeepRecSys accelerator is a latency curve profiled at a few batch sizes)."""

from __future__ import annotations

import copy
import time
from typing import Optional

import torch

from ..models import Batch, RecModel
from ..sched.latency import LatencyCurve

__all__ = ["Accelerator"]


class Accelerator:
    """Runs whole queries off the CPU: on a CUDA copy of the model (:meth:`cuda`) or by
    waiting the latency a :class:`LatencyCurve` gives for the query's size (:meth:`modeled`).

    Example::

        >>> acc = Accelerator.modeled(LatencyCurve((1, 1024), (0.5, 2.0)))
        >>> acc.describe()
        'modeled accelerator'
    """

    def __init__(self, model: Optional[torch.nn.Module] = None,
                 curve: Optional[LatencyCurve] = None, device: Optional[torch.device] = None):
        if (model is None) == (curve is None):
            raise ValueError("an accelerator is either a CUDA model or a latency curve")
        self.model, self.curve, self.device = model, curve, device

    @classmethod
    def modeled(cls, curve: LatencyCurve) -> Accelerator:
        """An accelerator that takes ``curve(size)`` ms per query."""
        return cls(curve=curve)

    @classmethod
    def cuda(cls, model: RecModel, device: str = "cuda") -> Accelerator:
        """A CUDA copy of ``model`` on ``device``.

        Raises:
            RuntimeError: no CUDA device.
        """
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: use Accelerator.modeled(curve) instead")
        dev = torch.device(device)
        return cls(model=copy.deepcopy(model).to(dev).eval(), device=dev)

    def run(self, batch: Batch) -> None:
        """Run ``batch`` (a whole query) and return when it is done."""
        if self.curve is not None:
            time.sleep(self.curve(len(batch)) / 1e3)
            return
        assert self.model is not None and self.device is not None
        with torch.inference_mode():
            dense = batch.dense.to(self.device, non_blocking=True)
            sparse = [s.to(self.device, non_blocking=True) for s in batch.sparse]
            self.model(Batch(dense, sparse))
            torch.cuda.synchronize(self.device)

    def run_dense(self, embedded: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """Run the model's dense part (:meth:`~recengine.models.RecModel.dense_part`) on the
        device on vectors looked up elsewhere (``embedded`` by feature name, on the CPU):
        copy them over, run, and return the scores ``[B, T]`` on the CPU.

        Raises:
            RuntimeError: a modeled accelerator (it has a whole-query curve only).
        """
        if self.model is None or self.device is None:
            raise RuntimeError("a modeled accelerator runs whole queries only")
        with torch.inference_mode():
            moved = {k: v.to(self.device, non_blocking=True) for k, v in embedded.items()}
            out = self.model.dense_part(moved, dense.to(self.device, non_blocking=True))
            return out.cpu()  # waits for the device

    def describe(self) -> str:
        return f"CUDA {torch.cuda.get_device_name(self.device)}" if self.device is not None \
            else "modeled accelerator"
