"""``build(name)``: one of the eight DeepRecInfra models at a scale, with random or loaded
weights."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import torch

from ..shapes import model_names, model_tables, resolve_model
from .base import RecModel
from .zoo import DIEN, DIN, DLRM, NCF, MultiTaskWideAndDeep, WideAndDeep

__all__ = ["DEFAULT_SCALE", "TARGETS_MS", "build", "model_names"]

#: Row factor of :func:`build` by default: all eight models' tables take about 1.3 GB together
#: (25.6 GB at paper scale).
DEFAULT_SCALE = 0.05

#: The p95 tail-latency targets of DeepRecInfra, in milliseconds.
TARGETS_MS: dict[str, float] = {
    "rmc1": 100.0, "rmc2": 400.0, "rmc3": 100.0, "wnd": 25.0, "mtwnd": 25.0,
    "ncf": 5.0, "din": 100.0, "dien": 35.0,
}

_BUILDERS: dict[str, Callable[..., RecModel]] = {
    "rmc1": lambda t, **kw: DLRM(t, [128, 64, 32], [256, 64, 1], name="rmc1", **kw),
    "rmc2": lambda t, **kw: DLRM(t, [256, 128, 64], [128, 64, 1], name="rmc2", **kw),
    "rmc3": lambda t, **kw: DLRM(t, [2560, 1024, 256, 32], [512, 256, 1], name="rmc3", **kw),
    "wnd": WideAndDeep,
    "mtwnd": MultiTaskWideAndDeep,
    "ncf": NCF,
    "din": DIN,
    "dien": DIEN,
}


def build(name: str, scale: float = DEFAULT_SCALE, seed: Optional[int] = 0,
          weights: Union[str, os.PathLike[str], dict[str, torch.Tensor], None] = None,
          **kwargs: Any) -> RecModel:
    """Model ``name`` (``"rmc1"``, ``"DLRM-RMC2"``, ``"MT-WnD"`` ...) in eval mode.

    Args:
        name: one of :func:`model_names` (case and punctuation ignored).
        scale: table row factor (1.0 is paper scale; tables keep at least 1024 rows).
        seed: seeds the random weights (``None``: torch's global generator).
        weights: a state dict, or a ``.safetensors`` / ``torch.save`` file of one, to load
            (every key must match).
        **kwargs: the model class's options (``tasks`` for MT-WnD, ``history`` for DIN and
            DIEN).

    Raises:
        ValueError: an unknown model or a bad scale or option.
        FileNotFoundError: ``weights`` names no file.

    Example::

        >>> m = build("ncf", scale=0.01)
        >>> m.name, [t.num_rows for t in m.tables]
        ('ncf', [1400, 1400, 1024, 1024])
    """
    key = resolve_model(name)
    tables = model_tables(key, scale)
    try:
        if seed is None:
            model = _BUILDERS[key](tables, **kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _BUILDERS[key](tables, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad option for {key}: {e}") from None
    if weights is not None:
        model.load_state_dict(_state(weights))
        if not isinstance(weights, dict):
            weights = os.path.abspath(weights)
    #: What made the model, so a worker process can make its own replica.
    model.build_args = dict(name=key, scale=scale, seed=seed, weights=weights, **kwargs)
    return model.eval()


def _state(weights: Union[str, os.PathLike[str], dict[str, torch.Tensor]]) -> dict[str, Any]:
    if isinstance(weights, dict):
        return weights
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
