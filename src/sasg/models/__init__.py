"""Models written with torch alone, built by name."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .init import init_parameters
from .lenet import lenet5
from .mlp import fc, flat_features, logreg
from .resnet import resnet18_cifar
from .vgg import vgg16_bn

# name -> builder(sample_shape, num_classes) -> nn.Module
MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "fc": lambda shape, classes: fc(flat_features(shape), classes),
    "logreg": lambda shape, classes: logreg(flat_features(shape), classes),
    "lenet5": lenet5,
    "resnet18": resnet18_cifar,
    "vgg16": vgg16_bn,
}


def build_model(name: str, sample_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build model ``name`` for inputs of ``sample_shape``, initialised from ``seed``."""
    key = name.strip().lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    # Built on the meta device so the layers' own initialisation draws nothing from the global
    # RNG; init_parameters then fills every parameter and buffer from a dedicated generator.
    with torch.device("meta"):
        model = MODELS[key](tuple(sample_shape), int(num_classes))
    model = model.to_empty(device="cpu")
    return init_parameters(model, torch.Generator().manual_seed(int(seed)))


def count_parameters(name: str, sample_shape: tuple[int, ...], num_classes: int) -> int:
    """Parameter count without allocating the model (built on the meta device)."""
    key = name.strip().lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    with torch.device("meta"):
        return num_parameters(MODELS[key](tuple(sample_shape), int(num_classes)))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


__all__ = ["MODELS", "build_model", "count_parameters", "has_batchnorm", "init_parameters", "num_parameters"]
