"""The four published data sets: their names, official files, checksums, mirrors and per-channel
statistics, the folder their files live in, and the checks every loader shares.

This is the catalogue :mod:`.fetch` downloads from and :mod:`.idx` and :mod:`.cifar` read
against; :mod:`.formats` says how the pieces fit (folder layout, formats, safety).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100")

_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
}

IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# name -> (archive file, folder inside the archive, train members, test member, label key)
CIFAR_LAYOUT: dict[str, tuple[str, str, tuple[str, ...], str, bytes]] = {
    "cifar10": (
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
    ),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", b"fine_labels"),
}

# MD5 of the official published files.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}

# Public mirrors, tried in order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MNIST_MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
CIFAR_MIRRORS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": MNIST_MIRRORS,
    "fashion-mnist": FASHION_MNIST_MIRRORS,
    "cifar10": CIFAR_MIRRORS,
    "cifar100": CIFAR_MIRRORS,
}

# Per-channel statistics of each training set (pixels scaled to [0, 1]).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NUM_CLASSES: dict[str, int] = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}

HOW_TO_GET = "pass --download on a machine with internet, or copy the files there"


def canonical_name(name: str) -> str:
    """``"Fashion_MNIST"`` -> ``"fashion-mnist"``; unknown names are a ValueError listing the choices."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise ValueError(f"unknown data set {name!r} for --data-dir; choose from {', '.join(DATASET_NAMES)}")
    return key


def expected_files(name: str) -> tuple[str, ...]:
    """The official file names of data set ``name`` (what ``download`` fetches)."""
    return tuple(CHECKSUMS[canonical_name(name)])


def dataset_folder(name: str, data_dir: str | os.PathLike) -> Path:
    """Where the files of ``name`` are looked for: ``<data_dir>/<name>``, or ``data_dir`` itself
    if it is already named ``name`` (so ``--data-dir data/mnist`` works too)."""
    key = canonical_name(name)
    root = Path(data_dir).expanduser()
    return root if root.name.lower() == key else root / key


def missing_files(key: str, folder: Path, files: list[str], expected: str | None = None) -> FileNotFoundError:
    """The error for absent files (or an absent folder): names what is missing, where it was
    looked for, and how to get it, since the user's next step is to fetch or copy it."""
    what = "folder" if not folder.is_dir() else ", ".join(files) + " in folder"
    expected = expected or ", ".join(expected_files(key))
    return FileNotFoundError(
        f"{key}: missing {what} {folder}; expected {expected} there "
        f"(the folder is <--data-dir>/{key}); {HOW_TO_GET}"
    )


def check_labels(labels: np.ndarray, num_classes: int, where: Path) -> None:
    """Refuse labels outside ``0 .. num_classes - 1``: a tampered or foreign file, which would
    otherwise fail later as an index error deep inside the loss."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: labels outside 0..{num_classes - 1}; not the official file")


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an ``(n, C, H, W)`` batch (the stats in :data:`NORMALIZATION`)."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


__all__ = [
    "CHECKSUMS",
    "CIFAR_LAYOUT",
    "CIFAR_MIRRORS",
    "DATASET_NAMES",
    "HOW_TO_GET",
    "IDX_FILES",
    "MIRRORS",
    "NORMALIZATION",
    "NUM_CLASSES",
    "canonical_name",
    "check_labels",
    "dataset_folder",
    "expected_files",
    "missing_files",
    "normalize",
]
