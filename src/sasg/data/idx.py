"""MNIST and Fashion-MNIST from their four gzipped IDX files.

IDX: a big-endian header (magic, then one int32 per dimension size) followed by raw unsigned
bytes. Magic 2051 = unsigned bytes with 3 dimensions (images), 2049 = 1 dimension (labels).
Every length the header implies is checked against the bytes actually there, so a truncated or
swapped file is a clear error, not a reshape failure.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from ..safe_files import open_regular
from .dataset import ArrayDataset, DataSplit
from .fetch import verify_file
from .published import CHECKSUMS, IDX_FILES, NORMALIZATION, NUM_CLASSES, canonical_name, check_labels, missing_files, normalize

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def load_idx_dataset(name: str, folder: str | os.PathLike, verify: bool = False) -> DataSplit:
    """MNIST or Fashion-MNIST from the four gzipped IDX files in ``folder``."""
    key = canonical_name(name)
    folder = Path(folder)
    if key not in ("mnist", "fashion-mnist"):
        raise ValueError(f"{key} is not an IDX data set; use load_from_dir({key!r}, ...)")
    paths = {role: folder / fname for role, fname in IDX_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise missing_files(key, folder, missing)
    if verify:
        for path in paths.values():
            verify_file(path, CHECKSUMS[key][path.name])
    mean, std = NORMALIZATION[key]

    def part(images_role: str, labels_role: str) -> ArrayDataset:
        images = read_idx(paths[images_role], IDX_IMAGES_MAGIC)
        labels = read_idx(paths[labels_role], IDX_LABELS_MAGIC)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{paths[images_role]}: images are {images.shape[1:]}, expected 28x28")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{paths[images_role].name} has {images.shape[0]} images but {paths[labels_role].name} "
                f"has {labels.shape[0]} labels; the files come from different releases, download them again"
            )
        check_labels(labels, NUM_CLASSES[key], paths[labels_role])
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return ArrayDataset(normalize(x, mean, std), torch.from_numpy(labels.astype(np.int64)), NUM_CLASSES[key], key)

    return DataSplit(part("train_images", "train_labels"), part("test_images", "test_labels"))


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes into a uint8 array of the shape its header gives.

    The header is a big-endian int32 magic (``0x0000 08 nd``: type 0x08 = unsigned byte, then
    the number of dimensions), followed by one big-endian int32 per dimension.
    """
    path = Path(path)
    try:
        with open_regular(path) as packed, gzip.open(packed, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"{path} is not a complete gzip file ({exc}); it is probably truncated: delete it and "
            f"pass --download again, or copy the official file"
        ) from exc
    if len(raw) < 4:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, too short for an IDX header; download it again")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{path} has IDX magic number {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'}); wrong or swapped file"
        )
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: IDX magic {magic} is not an unsigned-byte file (type 0x08)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its header; download it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {state}: {len(raw)} bytes after decompression, expected {expected} for dims {dims}; "
            f"delete it and pass --download again, or copy the official file"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()



__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "load_idx_dataset", "read_idx"]
