"""Data loading of the real files, the validation split, and clear errors for bad files."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct

import numpy as np
import pytest
import torch

from vqlib import data as vdata
from vqlib.errors import ConfigError, DataError


def test_real_files_load_into_three_splits(data):
    assert data.train_images.shape == (55000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.val_images.shape == (5000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.dtype == torch.int64
    # 6,000 training images per class in the data set, 500 of them carved out for validation
    assert torch.bincount(data.val_labels).tolist() == [500] * 10
    assert torch.bincount(data.train_labels).tolist() == [5500] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert 60 < data.train_images.float().mean() < 80  # FashionMNIST's mean pixel is ~72.9


def test_validation_split_is_fixed_and_disjoint(data):
    labels = np.concatenate([data.train_labels.numpy(), data.val_labels.numpy()])
    first = vdata.validation_indices(labels)
    assert np.array_equal(first, vdata.validation_indices(labels))
    # The split must be the same on every machine: pin it by its content.
    raw = vdata.read_idx(vdata.find_data_dir(allow_download=False) / "train-labels-idx1-ubyte.gz")
    idx = vdata.validation_indices(raw.astype(np.int64))
    assert len(idx) == 5000 and len(np.unique(idx)) == 5000
    assert hashlib.md5(idx.astype("<i8").tobytes()).hexdigest() == "1b1db9d72a14df85cd7476eba3c6a197"
    # no training image is a validation image (compare image bytes)
    val_set = {bytes(x) for x in data.val_images[:200].numpy()}
    train_set = {bytes(x) for x in data.train_images.numpy()}
    assert not (val_set & train_set) - {bytes(28 * 28)}


def test_to_float_and_batches():
    x = torch.zeros(3, 28, 28, dtype=torch.uint8)
    x[:, :, 14:] = 255
    f = vdata.to_float(x)
    assert f.shape == (3, 1, 28, 28) and f.dtype == torch.float32 and f.min() == 0 and f.max() == 1
    batches = list(vdata.batch_indices(10, 4, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))


def test_subset_is_stratified_and_checked(data):
    images, labels = vdata.subset(data.train_images, data.train_labels, 1003, seed=1)
    assert len(images) == 1003 and len(labels) == 1003
    assert torch.bincount(labels).min() >= 100
    with pytest.raises(ConfigError, match="only 55000"):
        vdata.subset(data.train_images, data.train_labels, 60000)


# ----------------------------------------------------------------------------- bad files


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = struct.pack(">II", magic, array.shape[0]) + b"".join(struct.pack(">I", d) for d in array.shape[1:])
    return header + array.astype(np.uint8).tobytes()


def _write_gz(path, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


def test_truncated_gz_is_a_clear_error(tmp_path):
    src = vdata.find_data_dir(allow_download=False) / "t10k-labels-idx1-ubyte.gz"
    blob = src.read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="not a readable gzip file"):
        vdata.read_idx(bad)


def test_truncated_content_is_a_clear_error(tmp_path):
    payload = _idx_bytes(0x803, np.zeros((5, 28, 28)))[:-100]
    with pytest.raises(DataError, match="truncated or corrupt"):
        vdata.read_idx(_write_gz(tmp_path / "x.gz", payload))


def test_wrong_magic_is_a_clear_error(tmp_path):
    labels = _write_gz(tmp_path / "labels.gz", _idx_bytes(0x801, np.zeros(5)))
    with pytest.raises(DataError, match="magic 0x00000801, but a file of images"):
        vdata.read_idx(labels, expected_magic=0x803)
    foreign = _write_gz(tmp_path / "foreign.gz", b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match="not an IDX file"):
        vdata.read_idx(foreign)


def test_wrong_checksum_is_a_clear_error(tmp_path):
    src = vdata.find_data_dir(allow_download=False) / "t10k-labels-idx1-ubyte.gz"
    labels = vdata.read_idx(src).copy()
    labels[0] = (labels[0] + 1) % 10  # one flipped label: header and length still right
    bad = _write_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx_bytes(0x801, labels))
    with pytest.raises(DataError, match="fails its checksum"):
        vdata.read_idx(bad, expected_md5=vdata.FILES["t10k-labels-idx1-ubyte.gz"][1])


def test_images_and_labels_of_different_counts(tmp_path):
    images = _write_gz(tmp_path / "i.gz", _idx_bytes(0x803, np.zeros((6, 28, 28))))
    labels = _write_gz(tmp_path / "l.gz", _idx_bytes(0x801, np.zeros(5)))
    with pytest.raises(DataError, match="6 images but .* 5 labels"):
        vdata.read_idx_pair(images, labels)


def test_corrupt_copy_in_data_dir_is_refused_not_skipped(tmp_path):
    src = vdata.find_data_dir(allow_download=False)
    for name in vdata.FILES:
        shutil.copy(src / name, tmp_path / name)
    blob = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[:1000])
    with pytest.raises(DataError, match="train-images"):
        vdata.load_fashion_mnist(tmp_path)


def test_missing_data_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("VQLIB_ROOT", str(tmp_path))
    monkeypatch.delenv(vdata.ENV_VAR, raising=False)
    monkeypatch.setattr(vdata, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError) as err:
        vdata.find_data_dir(allow_download=False)
    message = str(err.value)
    assert "dataset-fashion-mnist" in message and "--data-dir" in message and "download" in message
    # A download that cannot connect (a closed local port) ends in the same clear message.
    monkeypatch.setattr(vdata, "DOWNLOAD_BASES", ("http://127.0.0.1:9/",))
    with pytest.raises(DataError, match="download failed.*dataset-fashion-mnist"):
        vdata.find_data_dir()
    assert not any((tmp_path / "data" / "FashionMNIST" / "raw").glob("*.gz"))  # nothing half-downloaded


def test_search_order_prefers_argument_then_environment(tmp_path, monkeypatch):
    src = vdata.find_data_dir(allow_download=False)
    for name in vdata.FILES:
        (tmp_path / name).symlink_to(src / name)
    monkeypatch.setenv(vdata.ENV_VAR, str(tmp_path))
    assert vdata.find_data_dir(allow_download=False) == tmp_path
    assert vdata.find_data_dir(src, allow_download=False) == src


def test_uncompressed_idx_reads_like_gzipped(tmp_path):
    """infer-cls takes IDX files as users have them: gzip-compressed or not."""
    array = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(_idx_bytes(0x803, array))
    gz = _write_gz(tmp_path / "images-idx3-ubyte.gz", _idx_bytes(0x803, array))
    assert np.array_equal(vdata.read_idx(raw, expected_magic=0x803), vdata.read_idx(gz))
    raw.write_bytes(_idx_bytes(0x803, array)[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        vdata.read_idx(raw)
