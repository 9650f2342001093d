"""Fully connected models: the paper's MNIST net (FC 784-512-10) and logistic regression."""

from __future__ import annotations

import math

from torch import nn


def fc(in_features: int = 784, num_classes: int = 10, hidden: int = 512) -> nn.Module:
    """FC 784-512-10 with ReLU: 407,050 parameters on MNIST."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def logreg(in_features: int = 784, num_classes: int = 10) -> nn.Module:
    """Multinomial logistic regression: one linear layer on flattened inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


def flat_features(sample_shape: tuple[int, ...]) -> int:
    return math.prod(sample_shape)
