"""Published-format loaders, tested on tiny files written in the exact same formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import urllib.request

import numpy as np
import pytest
import torch

from sasg.data import formats
from sasg.data.fixtures import write_cifar, write_idx, write_idx_mnist
from sasg.data.formats import CHECKSUMS, NORMALIZATION, load_from_dir, md5sum, read_idx


def pixels(x: torch.Tensor, name: str) -> np.ndarray:
    """Undo the normalisation and the /255 scaling: back to the uint8 values in the file."""
    mean, std = NORMALIZATION[name]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    raw = torch.round((x * s + m) * 255.0)
    assert float((raw - (x * s + m) * 255.0).abs().max()) < 1e-3  # within float error of an integer
    return raw.to(torch.uint8).numpy()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, name):
    raw = write_idx_mnist(tmp_path / name, n_train=30, n_test=12, seed=1)
    data = load_from_dir(name, tmp_path)
    assert data.name == name and data.num_classes == 10
    assert data.train.x.shape == (30, 1, 28, 28) and data.test.x.shape == (12, 1, 28, 28)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    np.testing.assert_array_equal(pixels(data.train.x, name)[:, 0], raw["train_images"])
    np.testing.assert_array_equal(pixels(data.test.x, name)[:, 0], raw["test_images"])
    np.testing.assert_array_equal(data.train.y.numpy(), raw["train_labels"])
    np.testing.assert_array_equal(data.test.y.numpy(), raw["test_labels"])


def test_mnist_normalisation_maths(tmp_path):
    raw = write_idx_mnist(tmp_path / "mnist", n_train=5, n_test=5, seed=2)
    data = load_from_dir("mnist", tmp_path)
    expected = (raw["train_images"][0].astype(np.float32) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(data.train.x[0, 0].numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("archive", [True, False])
def test_cifar_round_trip(tmp_path, num_classes, archive):
    name = f"cifar{num_classes}"
    raw = write_cifar(tmp_path / name, n_train=23, n_test=9, num_classes=num_classes, seed=3, archive=archive)
    data = load_from_dir(name, tmp_path)
    assert data.name == name and data.num_classes == num_classes
    assert data.train.x.shape == (23, 3, 32, 32) and data.test.x.shape == (9, 3, 32, 32)
    # Channel-major planes: byte c*1024 + r*32 + col of a row is pixel (c, r, col).
    np.testing.assert_array_equal(pixels(data.train.x, name).reshape(23, 3072), raw["train_data"])
    np.testing.assert_array_equal(pixels(data.test.x, name).reshape(9, 3072), raw["test_data"])
    np.testing.assert_array_equal(data.train.y.numpy(), raw["train_labels"])
    np.testing.assert_array_equal(data.test.y.numpy(), raw["test_labels"])
    mean, std = NORMALIZATION[name]
    c, r, col = 2, 5, 7
    expected = (raw["train_data"][4, c * 1024 + r * 32 + col] / 255.0 - mean[c]) / std[c]
    assert float(data.train.x[4, c, r, col]) == pytest.approx(expected, abs=1e-6)


def test_names_and_folder_rule(tmp_path):
    write_idx_mnist(tmp_path / "fashion-mnist", n_train=4, n_test=2)
    assert load_from_dir("Fashion_MNIST", tmp_path).name == "fashion-mnist"
    # --data-dir may also point at the data set's own folder
    assert len(load_from_dir("fashion-mnist", tmp_path / "fashion-mnist").train) == 4
    with pytest.raises(ValueError, match="choose from"):
        load_from_dir("imagenet", tmp_path)


def test_missing_folder_names_folder_files_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_from_dir("mnist", tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "mnist") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "--download" in msg and "copy the files there" in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*--download"):
        load_from_dir("cifar10", tmp_path)


def test_missing_file_is_named(tmp_path):
    write_idx_mnist(tmp_path / "mnist", n_train=4, n_test=2)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-labels-idx1-ubyte\.gz in folder.*--download"):
        load_from_dir("mnist", tmp_path)


def cut_in_half(path):
    """A download cut off halfway."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_gzip_is_a_clear_error(tmp_path):
    write_idx_mnist(tmp_path / "mnist", n_train=40, n_test=2)
    cut_in_half(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="truncated.*--download"):
        load_from_dir("mnist", tmp_path)


def test_idx_shorter_than_its_header_says(tmp_path):
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as f:  # header promises 10 labels, 7 follow
        f.write((2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(7))
    with pytest.raises(ValueError, match="truncated: 15 bytes .*expected 18"):
        read_idx(path, 2049)


def test_wrong_magic_number(tmp_path):
    write_idx_mnist(tmp_path / "mnist", n_train=4, n_test=2)
    folder = tmp_path / "mnist"
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b)
    labels.write_bytes(a)
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        load_from_dir("mnist", tmp_path)


def test_image_and_label_counts_must_agree(tmp_path):
    write_idx_mnist(tmp_path / "mnist", n_train=4, n_test=2)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        load_from_dir("mnist", tmp_path)


def test_truncated_cifar_archive(tmp_path):
    write_cifar(tmp_path / "cifar10", n_train=20, n_test=5)
    cut_in_half(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz"):
        load_from_dir("cifar10", tmp_path)


def test_cifar_pickles_cannot_run_code(tmp_path):
    write_cifar(tmp_path / "cifar10", n_train=10, n_test=5, archive=False)

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran code')",))

    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="refusing to load builtins.exec"):
        load_from_dir("cifar10", tmp_path)


def test_verify_rejects_wrong_checksum(tmp_path):
    write_idx_mnist(tmp_path / "mnist", n_train=4, n_test=2)
    load_from_dir("mnist", tmp_path)  # fine without verify
    with pytest.raises(ValueError, match=r"has MD5 [0-9a-f]{32}, expected f68b3c2dcbeaaa9fbdd348bbdeb94873.*--download"):
        load_from_dir("mnist", tmp_path, verify=True)


def test_verify_passes_on_matching_checksums(tmp_path, monkeypatch):
    write_idx_mnist(tmp_path / "mnist", n_train=4, n_test=2)
    for fname in CHECKSUMS["mnist"]:
        monkeypatch.setitem(CHECKSUMS["mnist"], fname, md5sum(tmp_path / "mnist" / fname))
    assert len(load_from_dir("mnist", tmp_path, verify=True).test) == 2

    write_cifar(tmp_path / "cifar100", n_train=6, n_test=3, num_classes=100)
    archive = tmp_path / "cifar100" / "cifar-100-python.tar.gz"
    monkeypatch.setitem(CHECKSUMS["cifar100"], archive.name, md5sum(archive))
    assert len(load_from_dir("cifar100", tmp_path, verify=True).train) == 6


def test_verify_needs_the_cifar_archive(tmp_path):
    write_cifar(tmp_path / "cifar10", n_train=6, n_test=3, archive=False)
    assert len(load_from_dir("cifar10", tmp_path).train) == 6
    with pytest.raises(ValueError, match="cannot verify.*without verify=True"):
        load_from_dir("cifar10", tmp_path, verify=True)


def test_official_checksum_table():
    assert CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert CHECKSUMS["fashion-mnist"]["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert CHECKSUMS["cifar10"] == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert CHECKSUMS["cifar100"] == {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}
    assert all(len(v) == 32 for table in CHECKSUMS.values() for v in table.values())


# download() is exercised offline: urlopen is replaced by an in-memory server.


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(monkeypatch, payloads: dict[str, bytes]) -> list[str]:
    requested: list[str] = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return _FakeResponse(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def test_download_writes_verified_files_atomically(tmp_path, monkeypatch):
    write_cifar(tmp_path / "src", n_train=6, n_test=3)
    payload = (tmp_path / "src" / "cifar-10-python.tar.gz").read_bytes()
    monkeypatch.setitem(CHECKSUMS["cifar10"], "cifar-10-python.tar.gz", hashlib.md5(payload).hexdigest())
    requested = _serve(monkeypatch, {"cifar-10-python.tar.gz": payload})
    data = load_from_dir("cifar10", tmp_path / "data", download=True, verify=True)
    assert len(data.train) == 6 and requested == [formats.CIFAR_MIRRORS[0] + "cifar-10-python.tar.gz"]
    assert sorted(p.name for p in (tmp_path / "data" / "cifar10").iterdir()) == ["cifar-10-python.tar.gz"]
    formats.download("cifar10", tmp_path / "data")  # already there with the right checksum
    assert len(requested) == 1


def test_download_removes_a_file_with_the_wrong_checksum(tmp_path, monkeypatch):
    _serve(monkeypatch, {"cifar-10-python.tar.gz": b"not the archive"})
    with pytest.raises(OSError, match="(?s)checksum mismatch.*file removed.*copy the official files"):
        formats.download("cifar10", tmp_path)
    assert list((tmp_path / "cifar10").iterdir()) == []  # no partial or temporary file left


def test_a_half_extracted_cifar_folder_falls_back_to_the_archive(tmp_path):
    raw = write_cifar(tmp_path / "cifar10", n_train=12, n_test=4, num_classes=10, seed=2, archive=True)
    partial = tmp_path / "cifar10" / "cifar-10-batches-py"
    partial.mkdir()
    (partial / "data_batch_1").write_bytes(b"")  # an extraction that stopped early
    data = load_from_dir("cifar10", tmp_path)
    np.testing.assert_array_equal(data.train.y.numpy(), raw["train_labels"])
