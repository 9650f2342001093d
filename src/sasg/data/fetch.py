"""Fetching the published files, and checking them against their official MD5 checksums.

``download`` needs internet (these machines have none at run time: fetch on one that has it,
then copy the folder). A file is only ever moved into place after its checksum matched, so an
interrupted or corrupt download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..safe_files import open_regular
from .published import CHECKSUMS, MIRRORS, canonical_name, dataset_folder


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks (the CIFAR archives are 160+ MB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open_regular(path) as f:  # a FIFO at the name is refused, not waited on
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected_md5: str) -> None:
    """Raise ValueError if ``path`` does not have the official checksum."""
    actual = md5sum(path)
    if actual != expected_md5:
        raise ValueError(
            f"{path} has MD5 {actual}, expected {expected_md5} for the official file; it is corrupt, "
            f"truncated or a different release: delete it and pass --download again, or copy the official file"
        )


def download(name: str, data_dir: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Fetch the official files of ``name`` into ``dataset_folder(name, data_dir)``; returns it.

    Files already present with the right checksum are kept. Each file is written to a temporary
    file in the same folder and moved into place with ``os.replace`` only after its MD5 matched, so
    an interrupted or corrupt download never leaves a file that looks complete.
    """
    key = canonical_name(name)
    folder = dataset_folder(key, data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for filename, md5 in CHECKSUMS[key].items():
        target = folder / filename
        if target.is_file() and md5sum(target) == md5:
            continue
        errors: list[str] = []
        for mirror in MIRRORS[key]:
            try:
                _fetch(mirror + filename, target, md5, timeout)
                break
            except (OSError, ValueError) as exc:  # URLError is an OSError
                errors.append(f"{mirror + filename}: {exc}")
        else:
            raise OSError(
                f"could not download {filename} for {key} into {folder}:\n  " + "\n  ".join(errors)
                + f"\ncopy the official files ({', '.join(CHECKSUMS[key])}) into {folder} by hand instead"
            )
    return folder


def _fetch(url: str, target: Path, expected_md5: str, timeout: float) -> None:
    """One file from ``url`` into ``target`` through a temporary file beside it, moved into place
    only once its MD5 is ``expected_md5``; the temporary file is removed on any failure."""
    digest = hashlib.md5(usedforsecurity=False)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected_md5:
            raise ValueError(f"checksum mismatch: got MD5 {digest.hexdigest()}, expected {expected_md5}; file removed")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


__all__ = ["download", "md5sum", "verify_file"]
