"""recengine.moe: a mixture-of-experts layer with dynamic gating and Expert Buffering
(arXiv 2303.06182).

:class:`MoE` (dynamic or static gating), :class:`ExpertBuffer` (experts served from a few
fast slots over a memory-mapped slow tier), routing traces (:mod:`recengine.moe.traces`),
expert placement for load balance (:mod:`recengine.moe.placement`). Needs torch.

Example::

    >>> import torch
    >>> from recengine.moe import MoE
    >>> MoE(8, 16, num_experts=4)(torch.randn(3, 8)).shape
    torch.Size([3, 8])
"""

from . import placement, traces
from .buffer import ExpertBuffer
from .layer import GATINGS, MoE, dense_reference

__all__ = ["GATINGS", "ExpertBuffer", "MoE", "dense_reference", "placement", "traces"]
