"""CIFAR-10 and CIFAR-100 from the ``python`` tarball, or its already-extracted folder.

Each batch is a pickled dict with ``b"data"`` (uint8, ``(n, 3072)``, channel-major 32x32 planes)
and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Pickle can run arbitrary code,
so batches are read with an unpickler that only resolves the few numpy names a CIFAR batch needs;
anything else is refused. Archives and files are opened with ``open_regular`` (a FIFO or device
at the name is refused, not waited on).
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..safe_files import open_regular
from .dataset import ArrayDataset, DataSplit
from .fetch import verify_file
from .published import (
    CHECKSUMS,
    CIFAR_LAYOUT,
    HOW_TO_GET,
    NORMALIZATION,
    NUM_CLASSES,
    canonical_name,
    check_labels,
    missing_files,
    normalize,
)


def load_cifar(name: str, folder: str | os.PathLike, verify: bool = False) -> DataSplit:
    """CIFAR-10 or CIFAR-100 from the ``python`` archive or its extracted folder inside ``folder``.

    Without ``verify`` a complete extracted folder is preferred (no decompression), else the
    archive; with ``verify`` the archive is needed, because the official checksum is the archive's.
    """
    key = canonical_name(name)
    if key not in CIFAR_LAYOUT:
        raise ValueError(f"{key} is not a CIFAR data set; use load_from_dir({key!r}, ...)")
    archive_name, inner, train_members, test_member, label_key = CIFAR_LAYOUT[key]
    folder = Path(folder)
    archive, extracted = folder / archive_name, folder / inner
    members = (*train_members, test_member)

    if verify:
        if not archive.is_file():
            if extracted.is_dir():
                raise ValueError(
                    f"cannot verify {key}: only the extracted folder {extracted} is there and the official "
                    f"checksum is that of {archive_name}; put {archive_name} in {folder} or load without verify=True"
                )
            raise missing_files(key, folder, [archive_name])
        verify_file(archive, CHECKSUMS[key][archive_name])
        batches = _read_cifar_archive(archive, inner, members)
    elif extracted.is_dir() and all((extracted / m).is_file() for m in members):
        batches = {m: _unpickle_batch(_read_regular(extracted / m), extracted / m) for m in members}
    elif archive.is_file():
        # No folder, or a half-extracted one: the archive beside it is the whole data set.
        batches = _read_cifar_archive(archive, inner, members)
    elif extracted.is_dir():
        missing = [m for m in members if not (extracted / m).is_file()]
        raise FileNotFoundError(
            f"{key}: {extracted} lacks {', '.join(missing)}; extract {archive_name} again, "
            f"or put the archive in {folder}; {HOW_TO_GET}"
        )
    else:
        raise missing_files(key, folder, [archive_name], expected=f"{archive_name} or its extracted folder {inner}/")

    mean, std = NORMALIZATION[key]

    def part(names: tuple[str, ...]) -> ArrayDataset:
        xs, ys = [], []
        for m in names:
            data, labels = _cifar_arrays(batches[m], label_key, f"{folder / inner / m}")
            xs.append(data)
            ys.append(labels)
        data, labels = np.concatenate(xs), np.concatenate(ys)
        check_labels(labels, NUM_CLASSES[key], folder / inner)
        x = torch.from_numpy(data.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
        return ArrayDataset(normalize(x, mean, std), torch.from_numpy(labels), NUM_CLASSES[key], key)

    return DataSplit(part(train_members), part((test_member,)))


def _read_cifar_archive(archive: Path, inner: str, members: tuple[str, ...]) -> dict[str, dict]:
    """The batches ``members`` of folder ``inner`` inside the gzipped tarball ``archive``, read
    straight from the archive (nothing is extracted to disk, so no member path is ever written)."""
    out: dict[str, dict] = {}
    try:
        with open_regular(archive) as packed, tarfile.open(fileobj=packed, mode="r:gz") as tar:
            for m in members:
                try:
                    f = tar.extractfile(f"{inner}/{m}")
                except KeyError:
                    f = None
                if f is None:
                    raise ValueError(
                        f"{archive} has no member {inner}/{m}; it is not the official archive, download it again"
                    )
                out[m] = _unpickle_batch(f.read(), archive / inner / m)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"{archive} cannot be read ({exc}); it is probably truncated: delete it and pass --download again"
        ) from exc
    return out


def _read_regular(path: Path) -> bytes:
    """All bytes of ``path``, refusing anything but a regular file (a FIFO would block)."""
    with open_regular(path) as f:
        return f.read()


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only what a CIFAR batch contains (numpy arrays and dtypes); refuses anything else,
    so a tampered file cannot run code while being loaded."""

    # numpy's array rebuilders, taken from numpy itself so they resolve under numpy 1 and 2 alike
    _reconstruct = np.empty(0).__reduce__()[0]
    _frombuffer = np.empty(0).__reduce_ex__(5)[0]  # used by pickle protocol 5
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles spell bytes objects
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch") from None


def _unpickle_batch(raw: bytes, where: Path) -> dict:
    """One batch's dict from its pickled bytes, through :class:`_CifarUnpickler` only."""
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{where} is not a readable CIFAR batch ({exc}); it is truncated or not the official file") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{where} holds a {type(batch).__name__}, expected a dict; not a CIFAR batch")
    return batch


def _cifar_arrays(batch: dict, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images and labels, checked for the shapes and types of the official release."""
    if b"data" not in batch or label_key not in batch:
        raise ValueError(f"{where} lacks b'data' or {label_key!r}; not a batch of this CIFAR release")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: {data.shape[0]} images but {labels.size} labels")
    return data, labels



__all__ = ["load_cifar"]
