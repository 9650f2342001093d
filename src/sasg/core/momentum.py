r"""DGC's momentum factor masking, shared by the runners that correct momentum locally.

Momentum correction (Lin et al., *Deep Gradient Compression*, ICLR 2018, §3.2) has each worker
accumulate its velocity :math:`u_m \leftarrow \mu u_m + g_m` and compress that (through error
feedback) instead of the gradient. *Factor masking* then clears :math:`u_m` where the worker's
message sent an entry, so a sent entry does not keep pushing stale velocity. It applies to the
compressed tensors only: a tensor the tensor policy sends whole is sent every round, and clearing
its velocity every round would leave it no momentum at all (without masking its update is exactly
momentum SGD's). :class:`sasg.ddp.optimizers.MomentumCorrection` (the hook) and
:class:`sasg.optim.SASG` (``momentum_correction=True``) use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import Layout
from .payloads import SparsePayload
from .tensor_policy import whole_segments


def compressed_entries(layout: Layout, policy: str, device=None) -> Tensor:
    """``(d,)`` bool: the entries of the tensors ``policy`` does not send whole."""
    mask = torch.ones(layout.numel, dtype=torch.bool, device=device)
    for seg, whole in zip(layout.segments, whole_segments(layout, policy)):
        if whole:
            mask[seg.offset : seg.end] = False
    return mask


def factor_mask_(velocity: Tensor, last, row: int, compressed: Tensor) -> None:
    """Zero ``velocity`` where ``last[row]`` (the server's copy of the worker's latest message,
    just sent) holds an entry of a compressed tensor. Only sparse messages name entries; any
    other message leaves the velocity as it is."""
    if isinstance(last, SparsePayload):
        idx = last.indices[row]
        velocity[idx[compressed[idx]]] = 0
