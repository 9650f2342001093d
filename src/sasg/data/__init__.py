"""Data sets, splits over workers and per-worker minibatches."""

from .dataset import ArrayDataset, DataSplit
from .mnist5k import load_mnist5k
from .partition import iid_shards
from .sampler import WorkerSampler
from .synthetic import make_synthetic

DATASETS = ("mnist5k", "synthetic")


def load_dataset(name: str, **kwargs) -> DataSplit:
    """Load a data set by name: ``mnist5k`` (embedded, default) or ``synthetic`` (tests)."""
    key = name.strip().lower()
    if key == "mnist5k":
        return load_mnist5k()
    if key == "synthetic":
        return make_synthetic(**kwargs)
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


__all__ = [
    "ArrayDataset",
    "DATASETS",
    "DataSplit",
    "WorkerSampler",
    "iid_shards",
    "load_dataset",
    "load_mnist5k",
    "make_synthetic",
]
