"""Reusable scratch buffers for the hot path.

Large fresh tensors are expensive on CPU: above glibc's mmap threshold (at most 32 MiB) every
allocation is a new mapping whose pages fault in one by one, which costs several times the
memory pass that fills it. The hot path's large temporaries (the trigger's gradient difference,
a segment's candidate mask and its row buffer, the simulator's gathered anchors) therefore live in
buffers kept on their owner and reused every round.

A scratch buffer is only ever used *within* one call of its owner; nothing that is returned or
stored points into it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scratch(owner: object, name: str, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A contiguous tensor of ``shape`` (contents undefined) from ``owner``'s buffer ``name``,
    grown when needed; ``dtype``/device default to ``like``'s."""
    dtype = like.dtype if dtype is None else dtype
    need = 1
    for s in shape:
        need *= int(s)
    store = owner.__dict__.setdefault("_scratch_buffers", {})
    buf = store.get(name)
    if buf is None or buf.numel() < need or buf.dtype != dtype or buf.device != like.device:
        buf = torch.empty(max(need, 1), dtype=dtype, device=like.device)
        store[name] = buf
    return buf[:need].view(shape)

