"""Deterministic parameter initialisation from a dedicated generator.

PyTorch's layer constructors draw from the global RNG; we re-initialise every parameter from our
own ``torch.Generator`` so a run never touches (or depends on) global RNG state. The bounds follow
PyTorch's defaults for Linear/Conv (uniform in +-1/sqrt(fan_in)); normalisation layers start at
weight 1, bias 0.
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
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model
