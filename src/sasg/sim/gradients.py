"""Per-worker gradients of the training loss, for a batch of workers at once.

``VmapGradients`` vectorises over workers with ``torch.func.vmap`` + ``functional_call``;
``LoopGradients`` computes the same thing one worker at a time (needed for models whose forward
pass mixes samples of a batch, e.g. BatchNorm, and kept as the reference). Both return a flat
``(N, d)`` buffer in the layout's order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..core.layout import Layout


def _loss_fn(model: nn.Module, buffers: dict[str, Tensor]):
    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (params, buffers), (x,))
        return F.cross_entropy(logits, y)

    return loss


class LoopGradients:
    backend = "loop"

    def __init__(self, model: nn.Module, layout: Layout):
        self.model = model
        self.layout = layout
        self._grad = grad(_loss_fn(model, dict(model.named_buffers())))

    def __call__(self, params: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``params``: ``(d,)`` shared by all workers or ``(N, d)`` one row each;
        ``x``: ``(N, B, ...)``; ``y``: ``(N, B)``. Returns ``(N, d)``."""
        n = x.shape[0]
        out = torch.empty(n, self.layout.numel, dtype=params.dtype, device=params.device)
        for m in range(n):
            p = params if params.dim() == 1 else params[m]
            g = self._grad(self.layout.views(p), x[m], y[m])
            out[m] = self.layout.flatten(g)
        return out


class VmapGradients:
    backend = "vmap"

    def __init__(self, model: nn.Module, layout: Layout):
        self.model = model
        self.layout = layout
        self._grad = vmap(grad(_loss_fn(model, dict(model.named_buffers()))), in_dims=(0, 0, 0))

    def __call__(self, params: Tensor, x: Tensor, y: Tensor) -> Tensor:
        if params.dim() == 1:
            # Shared parameters: a stride-0 expand (no copy) batched like per-worker ones is
            # faster under vmap than in_dims=None, whose weight gradients reduce differently.
            params = params.expand(x.shape[0], -1)
        grads = self._grad(self.layout.views(params), x, y)
        return self.layout.flatten(grads, batch_dims=1)


def make_gradients(model: nn.Module, layout: Layout, backend: str = "auto"):
    """``auto`` picks ``vmap`` unless the model has BatchNorm (then ``loop``)."""
    from ..models import has_batchnorm

    key = backend.strip().lower()
    if key == "auto":
        key = "loop" if has_batchnorm(model) else "vmap"
    if key == "vmap":
        if has_batchnorm(model):
            raise ValueError("the vmap backend cannot run models with BatchNorm; use --backend loop or auto")
        return VmapGradients(model, layout)
    if key == "loop":
        return LoopGradients(model, layout)
    raise ValueError(f"unknown backend {backend!r}; choose from auto, vmap, loop")
