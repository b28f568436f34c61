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
    """Runs whole queries off the CPU: on a CUDA copy of the model (:meth:`cuda`), on one in
    a process of its own (:meth:`process_on`), or by waiting the latency a
    :class:`LatencyCurve` gives for the query's size (:meth:`modeled`).

    Example::

        >>> acc = Accelerator.modeled(LatencyCurve((1, 1024), (0.5, 2.0)))
        >>> acc.describe()
        'modeled accelerator'
    """

    def __init__(self, model: Optional[torch.nn.Module] = None,
                 curve: Optional[LatencyCurve] = None, device: Optional[torch.device] = None,
                 process: bool = False):
        if (model is not None) + (curve is not None) + process != 1:
            raise ValueError("an accelerator is a CUDA model, a latency curve or a process")
        if process and device is None:
            raise ValueError("an accelerator process needs a device")
        self.model, self.curve, self.device = model, curve, device
        #: Whether the server runs the accelerator's forwards in a process of its own.
        self.process = process

    @classmethod
    def process_on(cls, device: str = "cuda") -> Accelerator:
        """An accelerator the server runs in a worker process of its own, on ``device``: the
        process rebuilds the model from its :func:`~recengine.models.build` arguments and
        the server's input pool, and the server's accelerator thread only hands it each
        query and waits (so the accelerator's kernel launches do not share the server's
        interpreter lock with the dispatcher and worker threads). ``device="cpu"`` runs it
        on the CPU (for tests).

        Raises:
            RuntimeError: ``device`` is a CUDA device and there is none.
        """
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: use Accelerator.modeled(curve) instead")
        return cls(device=dev, process=True)

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
        """Run ``batch`` (a whole query) and return when it is done.

        Raises:
            RuntimeError: an accelerator process (its server runs it).
        """
        if self.process:
            raise RuntimeError("an accelerator process runs inside a Server")
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
            RuntimeError: not a CUDA copy of a model (a modeled accelerator has a whole-query
                curve only; an accelerator process runs inside a server).
        """
        if not isinstance(self.model, RecModel) or self.device is None:
            raise RuntimeError("only a CUDA copy of a model (Accelerator.cuda) runs the dense "
                               "part alone")
        with torch.inference_mode():
            moved = {k: v.to(self.device, non_blocking=True) for k, v in embedded.items()}
            out = self.model.dense_part(moved, dense.to(self.device, non_blocking=True))
            return out.cpu()  # waits for the device

    def describe(self) -> str:
        if self.device is None:
            return "modeled accelerator"
        name = (f"CUDA {torch.cuda.get_device_name(self.device)}"
                if self.device.type == "cuda" else str(self.device))
        return f"{name} (own process)" if self.process else name
