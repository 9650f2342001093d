"""Deterministic parameter initialisation from a dedicated generator.

PyTorch's layer constructors draw from the global RNG; we re-initialise every parameter from our
own ``torch.Generator`` so a run never touches (or depends on) global RNG state. The bounds follow
PyTorch's defaults for Linear/Conv (uniform in +-1/sqrt(fan_in)); normalisation layers start at
weight 1, bias 0 and
fresh running statistics. Every parameter must be covered: models are built on the meta device,
so anything not set here would be uninitialised memory (checked below).
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            module.weight.uniform_(-bound, bound, generator=generator)
            if module.bias is not None:
                module.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()  # weight 1, bias 0, running mean 0, var 1, count 0
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"init_parameters does not know how to initialise {type(module).__name__}")
    return model
