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
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..safe_files import open_regular
from .dataset import ArrayDataset, DataSplit

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

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
_HOW_TO_GET = "pass --download on a machine with internet, or copy the files there"


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


# --------------------------------------------------------------------------- download


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


_download_files = download  # load_from_dir's ``download`` flag shadows the function's name


def _fetch(url: str, target: Path, expected_md5: str, timeout: float) -> None:
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


# --------------------------------------------------------------------------- loading


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


def _missing(key: str, folder: Path, files: list[str], expected: str | None = None) -> FileNotFoundError:
    what = "folder" if not folder.is_dir() else ", ".join(files) + " in folder"
    expected = expected or ", ".join(expected_files(key))
    return FileNotFoundError(
        f"{key}: missing {what} {folder}; expected {expected} there "
        f"(the folder is <--data-dir>/{key}); {_HOW_TO_GET}"
    )


def load_idx_dataset(name: str, folder: str | os.PathLike, verify: bool = False) -> DataSplit:
    """MNIST or Fashion-MNIST from the four gzipped IDX files in ``folder``."""
    key = canonical_name(name)
    folder = Path(folder)
    if key not in ("mnist", "fashion-mnist"):
        raise ValueError(f"{key} is not an IDX data set; use load_from_dir({key!r}, ...)")
    paths = {role: folder / fname for role, fname in IDX_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise _missing(key, folder, missing)
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
        _check_labels(labels, NUM_CLASSES[key], paths[labels_role])
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return ArrayDataset(_normalize(x, mean, std), torch.from_numpy(labels.astype(np.int64)), NUM_CLASSES[key], key)

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
            raise _missing(key, folder, [archive_name])
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
            f"or put the archive in {folder}; {_HOW_TO_GET}"
        )
    else:
        raise _missing(key, folder, [archive_name], expected=f"{archive_name} or its extracted folder {inner}/")

    mean, std = NORMALIZATION[key]

    def part(names: tuple[str, ...]) -> ArrayDataset:
        xs, ys = [], []
        for m in names:
            data, labels = _cifar_arrays(batches[m], label_key, f"{folder / inner / m}")
            xs.append(data)
            ys.append(labels)
        data, labels = np.concatenate(xs), np.concatenate(ys)
        _check_labels(labels, NUM_CLASSES[key], folder / inner)
        x = torch.from_numpy(data.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
        return ArrayDataset(_normalize(x, mean, std), torch.from_numpy(labels), NUM_CLASSES[key], key)

    return DataSplit(part(train_members), part((test_member,)))


def _read_cifar_archive(archive: Path, inner: str, members: tuple[str, ...]) -> dict[str, dict]:
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
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{where} is not a readable CIFAR batch ({exc}); it is truncated or not the official file") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{where} holds a {type(batch).__name__}, expected a dict; not a CIFAR batch")
    return batch


def _cifar_arrays(batch: dict, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in batch or label_key not in batch:
        raise ValueError(f"{where} lacks b'data' or {label_key!r}; not a batch of this CIFAR release")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: {data.shape[0]} images but {labels.size} labels")
    return data, labels


def _check_labels(labels: np.ndarray, num_classes: int, where: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: labels outside 0..{num_classes - 1}; not the official file")


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


__all__ = [
    "CHECKSUMS",
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
