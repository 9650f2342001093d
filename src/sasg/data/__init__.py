"""Data sets, splits over workers, augmentation and per-worker minibatches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .augment import AUGMENTATIONS, make_augmentation
from .dataset import ArrayDataset, DataSplit
from .mnist5k import load_mnist5k
from .partition import iid_shards
from .sampler import WorkerSampler, worker_seed
from .splits import describe_partition, dirichlet_shards, label_shards
from .synthetic import make_synthetic


@dataclass(frozen=True)
class DatasetInfo:
    sample_shape: tuple[int, ...]
    num_classes: int
    needs_files: bool  # loaded from published files in --data-dir
    train_size: int | None = None


DATASETS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo((1, 28, 28), 10, False, 4000),
    "synthetic": DatasetInfo((20,), 4, False, 512),
    "mnist": DatasetInfo((1, 28, 28), 10, True, 60000),
    "fashion-mnist": DatasetInfo((1, 28, 28), 10, True, 60000),
    "cifar10": DatasetInfo((3, 32, 32), 10, True, 50000),
    "cifar100": DatasetInfo((3, 32, 32), 100, True, 50000),
}
PARTITIONS = ("iid", "dirichlet", "shards")


def load_dataset(name: str, data_dir: str | None = None, download: bool = False, **kwargs) -> DataSplit:
    """Load a data set by name: ``mnist5k`` (embedded, default), ``synthetic`` (tests), or
    ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` from their published files."""
    key = name.strip().lower()
    if key == "mnist5k":
        return load_mnist5k()
    if key == "synthetic":
        return make_synthetic(**kwargs)
    if key in DATASETS:
        if not data_dir:
            raise FileNotFoundError(
                f"data set {key!r} loads from its published files; pass --data-dir FOLDER "
                "(and --download on a machine with internet)"
            )
        from .formats import load_from_dir

        return load_from_dir(key, data_dir, download=download)
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


def make_partition(
    kind: str, labels: Tensor, num_workers: int, generator: torch.Generator, beta: float = 0.5,
    shards_per_worker: int = 2, min_size: int = 1,
) -> list[Tensor]:
    """Split the training set over workers: ``iid`` (the paper's), ``dirichlet`` (non-IID by
    label, concentration ``beta``; redrawn until every worker holds ``min_size`` samples, the
    batch size in a run) or ``shards`` (sorted label shards)."""
    if kind == "iid":
        return iid_shards(len(labels), num_workers, generator)
    if kind == "dirichlet":
        return dirichlet_shards(labels, num_workers, beta, generator, min_size=min_size)
    if kind == "shards":
        return label_shards(labels, num_workers, shards_per_worker, generator)
    raise ValueError(f"unknown partition {kind!r}; choose from {', '.join(PARTITIONS)}")


__all__ = [
    "AUGMENTATIONS",
    "ArrayDataset",
    "DATASETS",
    "DataSplit",
    "DatasetInfo",
    "PARTITIONS",
    "WorkerSampler",
    "describe_partition",
    "dirichlet_shards",
    "iid_shards",
    "label_shards",
    "load_dataset",
    "load_mnist5k",
    "make_augmentation",
    "make_partition",
    "make_synthetic",
    "worker_seed",
]
