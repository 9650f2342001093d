"""A small synthetic classification set for tests: Gaussian blobs, one per class."""

from __future__ import annotations

import torch

from .dataset import ArrayDataset, DataSplit


def make_synthetic(
    n_train: int = 512,
    n_test: int = 256,
    num_features: int = 20,
    num_classes: int = 4,
    seed: int = 0,
    noise: float = 1.0,
) -> DataSplit:
    """Linearly separable-ish blobs; deterministic in ``seed`` (own generator)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, num_features, generator=gen) * 2.0

    def draw(n: int) -> ArrayDataset:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=gen)]
        x = centers[y] + noise * torch.randn(n, num_features, generator=gen)
        return ArrayDataset(x.float(), y.long(), num_classes, "synthetic")

    return DataSplit(draw(n_train), draw(n_test))
