"""In-memory data sets: a pair of tensors and a name."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ArrayDataset:
    """Inputs ``x`` (float32, shape ``(n, *sample_shape)``) and int64 labels ``y`` (shape ``(n,)``)."""

    x: Tensor
    y: Tensor
    num_classes: int
    name: str = "data"

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, n: int) -> "ArrayDataset":
        return ArrayDataset(self.x[:n], self.y[:n], self.num_classes, self.name)


@dataclass
class DataSplit:
    train: ArrayDataset
    test: ArrayDataset

    @property
    def name(self) -> str:
        return self.train.name

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape


def to_device(split: DataSplit, device: torch.device | str) -> DataSplit:
    def move(d: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(d.x.to(device), d.y.to(device), d.num_classes, d.name)

    return DataSplit(move(split.train), move(split.test))
