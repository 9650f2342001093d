"""Full MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from their standard published files.

These machines have no network at run time, so the loaders read the files exactly as their
authors publish them from a local folder, and ``download`` fetches them on a machine that has
internet. Layout: the files of data set ``name`` live in ``<data_dir>/<name>/`` (or in
``data_dir`` itself when its last component already is ``name``). MNIST and Fashion-MNIST share
file names, so they need separate folders; one rule for all four keeps it predictable.

- MNIST / Fashion-MNIST: four gzipped IDX files (big-endian header: magic, dimension sizes, then
  raw unsigned bytes). Magic 2051 = unsigned bytes with 3 dimensions (images), 2049 = 1 dimension
  (labels).
- CIFAR-10 / CIFAR-100: the ``python`` tarball, or its already-extracted folder. Each batch is a
  pickled dict with ``b"data"`` (uint8, ``(n, 3072)``, channel-major 32x32 planes) and
  ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).

Pickle can run arbitrary code, so batches are read with an unpickler that only resolves the few
numpy names a CIFAR batch needs; anything else is refused. Checksums (MD5 of the official files)
are checked by ``download`` always and by ``load_from_dir`` only with ``verify=True``, since the
tests load tiny generated files in the same formats.

Modules: :mod:`.published` (names, files, checksums, mirrors, statistics, folders),
:mod:`.fetch` (``download``, checksums), :mod:`.idx` (MNIST, Fashion-MNIST), :mod:`.cifar`
(CIFAR-10, CIFAR-100, the restricted unpickler). This module is the front door: ``load_from_dir``
and the names users import from here.
"""

from __future__ import annotations

import os

from .cifar import load_cifar
from .dataset import DataSplit
from .fetch import download, md5sum, verify_file
from .idx import load_idx_dataset, read_idx
from .published import (
    CHECKSUMS,
    CIFAR_MIRRORS,
    DATASET_NAMES,
    MIRRORS,
    NORMALIZATION,
    canonical_name,
    dataset_folder,
    expected_files,
)

_download_files = download  # load_from_dir's ``download`` flag shadows the function's name


def load_from_dir(
    name: str, data_dir: str | os.PathLike, download: bool = False, verify: bool = False
) -> DataSplit:
    """Load ``name`` (mnist, fashion-mnist, cifar10, cifar100) from its published files.

    ``download=True`` fetches missing files first (needs internet). ``verify=True`` checks the
    official MD5 checksums before reading (off by default: tests use tiny generated files).
    Inputs come back as float32 ``(n, C, H, W)``, scaled to [0, 1] and normalised per channel.
    """
    key = canonical_name(name)
    if download:
        _download_files(key, data_dir)
    folder = dataset_folder(key, data_dir)
    if key in ("mnist", "fashion-mnist"):
        return load_idx_dataset(key, folder, verify=verify)
    return load_cifar(key, folder, verify=verify)


__all__ = [
    "CHECKSUMS",
    "CIFAR_MIRRORS",
    "DATASET_NAMES",
    "MIRRORS",
    "NORMALIZATION",
    "canonical_name",
    "dataset_folder",
    "download",
    "expected_files",
    "load_cifar",
    "load_from_dir",
    "load_idx_dataset",
    "md5sum",
    "read_idx",
    "verify_file",
]
