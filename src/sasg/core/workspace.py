"""Reusable buffers for the hot path, held by an explicit owner.

Large fresh tensors are expensive on CPU: above glibc's mmap threshold (at most 32 MiB) every
allocation is a new mapping whose pages fault in one by one, which costs several times the
memory pass that fills it. The hot path's large temporaries (the trigger's gradient difference,
top-k's candidate mask and row buffer, the simulator's gathered anchors) therefore live in a
:class:`Workspace` that their owner (a round engine, a compressor, a simulator) creates and keeps
as an ordinary attribute, and that is reused every round.

A workspace buffer is only ever used *within* one call; nothing that is returned or stored
points into it. :meth:`Workspace.cached` keeps small derived constants (top-k's sample
positions) that would otherwise be recomputed each round.
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch
from torch import Tensor


class Workspace:
    """Named scratch buffers (grown when needed, contents undefined) and cached constants."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._cache: dict[Hashable, Tensor] = {}

    def buffer(self, name: str, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """A contiguous tensor of ``shape`` from buffer ``name``; dtype/device default to ``like``'s."""
        dtype = like.dtype if dtype is None else dtype
        need = 1
        for s in shape:
            need *= int(s)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < need or buf.dtype != dtype or buf.device != like.device:
            buf = torch.empty(max(need, 1), dtype=dtype, device=like.device)
            self._buffers[name] = buf
        return buf[:need].view(shape)

    def cached(self, key: Hashable, make: Callable[[], Tensor]) -> Tensor:
        """``make()`` once per ``key``; later calls return the same tensor."""
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value
