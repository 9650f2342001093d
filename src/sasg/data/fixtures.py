"""Write tiny data sets in the exact published file formats, for tests and demos.

The real files are tens to hundreds of MB and cannot be fetched on these machines, so the format
readers are tested against small files written here byte for byte in the same layouts: gzipped
IDX for MNIST / Fashion-MNIST, and the CIFAR ``python`` tarball of pickled batch dicts. Each
writer returns the raw uint8 pixels and labels it wrote, so a test can check that loading gives
them back exactly. The only deliberate difference from the originals: the CIFAR batches are
pickled by Python 3 (bytes keys and values, as the Python-2 originals read back with
``encoding="bytes"``), not by Python 2.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .published import CIFAR_LAYOUT, IDX_FILES


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array as a gzipped IDX file (big-endian header: magic 0x0800|ndim, dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the bytes (and so the MD5) reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + array.tobytes())
    return path


def write_idx_mnist(
    folder: str | os.PathLike, n_train: int = 60, n_test: int = 20, seed: int = 0, num_classes: int = 10
) -> dict[str, np.ndarray]:
    """Write the four MNIST-style IDX files into ``folder`` (use it for Fashion-MNIST too).

    Returns ``{"train_images", "train_labels", "test_images", "test_labels"}`` as written
    (images uint8 ``(n, 28, 28)``, labels uint8 ``(n,)``). Labels cycle through the classes
    before being shuffled, so every class appears once ``n >= num_classes``.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for part, n in (("train", n_train), ("test", n_test)):
        arrays[f"{part}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{part}_labels"] = rng.permutation(np.arange(n) % num_classes).astype(np.uint8)
    for role, fname in IDX_FILES.items():
        write_idx(Path(folder) / fname, arrays[role])
    return arrays


def write_cifar(
    folder: str | os.PathLike,
    n_train: int = 50,
    n_test: int = 20,
    num_classes: int = 10,
    seed: int = 0,
    archive: bool = True,
) -> dict[str, np.ndarray]:
    """Write a CIFAR-10 (``num_classes=10``) or CIFAR-100 (``100``) release into ``folder``.

    ``archive=True`` writes ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``; ``False``
    writes the extracted folder (``cifar-10-batches-py/`` / ``cifar-100-python/``). CIFAR-10's
    training images are spread over ``data_batch_1..5`` as in the original. Returns
    ``{"train_data", "train_labels", "test_data", "test_labels"}`` with data uint8 ``(n, 3072)``.
    """
    key = {10: "cifar10", 100: "cifar100"}.get(num_classes)
    if key is None:
        raise ValueError(f"num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes}")
    archive_name, inner, train_members, test_member, label_key = CIFAR_LAYOUT[key]
    rng = np.random.default_rng(seed)
    arrays = {
        "train_data": rng.integers(0, 256, size=(n_train, 3072), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(n_train) % num_classes).astype(np.int64),
        "test_data": rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(n_test) % num_classes).astype(np.int64),
    }

    def batch(data: np.ndarray, labels: np.ndarray, title: str) -> bytes:
        d = {
            b"batch_label": title.encode(),
            label_key: [int(v) for v in labels],
            b"data": data,
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
        }
        if key == "cifar100":
            d[b"coarse_labels"] = [int(v) // 5 for v in labels]
        return pickle.dumps(d, protocol=4)

    members: dict[str, bytes] = {}
    splits = np.array_split(np.arange(n_train), len(train_members))
    for i, (member, idx) in enumerate(zip(train_members, splits)):
        members[member] = batch(arrays["train_data"][idx], arrays["train_labels"][idx], f"training batch {i + 1}")
    members[test_member] = batch(arrays["test_data"], arrays["test_labels"], "testing batch 1")
    meta_name = "batches.meta" if key == "cifar10" else "meta"
    members[meta_name] = pickle.dumps({b"label_names": [f"class_{c}".encode() for c in range(num_classes)]}, protocol=4)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(folder / archive_name, "w:gz") as tar:
            for member, payload in members.items():
                info = tarfile.TarInfo(f"{inner}/{member}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    else:
        (folder / inner).mkdir(parents=True, exist_ok=True)
        for member, payload in members.items():
            (folder / inner / member).write_bytes(payload)
    return arrays


__all__ = ["write_cifar", "write_idx", "write_idx_mnist"]
