"""FashionMNIST: find, download, verify and split the IDX files.

The whole data set is ~55 MB as uint8: it is read once into tensors and kept in
memory. Batches are index tensors into those tensors, never a per-item Dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
import urllib.request
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from . import paths
from .errors import ConfigError, DataError
from .files import atomic_path, ensure_dir

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "VQLIB_DATA_DIR"
DOWNLOAD_BASES = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

# (magic, MD5 of the decompressed content, MD5 of the official .gz).
# The decompressed MD5 is what we check: Debian re-compressed the files, so only
# the content is common to both sources (DATA.md).
FILES = {
    "train-images-idx3-ubyte.gz": (0x00000803, "f4a8712d7a061bf5bd6d2ca38dc4d50a", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte.gz": (0x00000801, "9018921c3c673c538a1fc5bad174d6f9", "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte.gz": (0x00000803, "8181f5470baa50b63fa0f6fddb340f0a", "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte.gz": (0x00000801, "15d484375f8d13e6eb1aabb0c3f46965", "bb300cfdad3c16e7a12a480ee83cd310"),
}

VALIDATION_SIZE = 5000
# Fixed seed of the validation split: numpy's PCG64 gives the same stream on every
# platform, so every machine carves the same 5,000 images.
SPLIT_SEED = 20170825

HOW_TO_PROVIDE = (
    "install the Debian package dataset-fashion-mnist, pass --data-dir (or set VQLIB_DATA_DIR) "
    "to a folder holding the four IDX .gz files, or allow the download into {download_dir}"
)


# ----------------------------------------------------------------------------- IDX files


# IDX type codes (third byte of the magic): only unsigned bytes are FashionMNIST's.
IDX_TYPES = {
    0x08: "unsigned bytes",
    0x09: "signed bytes",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
# The largest content read: 4 GiB, 85 times FashionMNIST's training images. A header may
# promise anything; this bounds what a reader of it can be made to hold.
MAX_IDX_BYTES = 4 << 30
_CHUNK = 1 << 20


def _idx_header(path: Path, head: bytes) -> tuple[int, int, tuple[int, ...]]:
    """(magic, header length, shape) from the first bytes of an IDX file, checked before any data is read."""
    if len(head) < 8:
        raise DataError(f"{path} is too short to be an IDX file ({len(head)} bytes)")
    magic, count = struct.unpack(">II", head[:8])
    if magic not in (0x00000801, 0x00000803):
        kind = IDX_TYPES.get((magic >> 8) & 0xFF) if magic >> 16 == 0 else None
        if kind and kind != "unsigned bytes":
            raise DataError(
                f"{path} is an IDX file of {kind}; vqlib reads IDX files of unsigned bytes (images or labels)"
            )
        raise DataError(f"{path} is not an IDX file of images or labels (magic number 0x{magic:08x})")
    if magic == 0x00000803:
        if len(head) < 16:
            raise DataError(f"{path} is too short to be an IDX file of images ({len(head)} bytes)")
        rows, cols = struct.unpack(">II", head[8:16])
        if count and (rows == 0 or cols == 0):
            raise DataError(
                f"{path} promises {count} images of {rows} x {cols} pixels; an image needs at least one pixel"
            )
        return magic, 16, (count, rows, cols)
    return magic, 8, (count,)


def _read_bounded(f, limit: int) -> bytes:
    """At most `limit` bytes of a (decompressing) stream, read in chunks: memory follows what the
    file really holds, never what its header claims."""
    out = bytearray()
    while len(out) < limit:
        chunk = f.read(min(_CHUNK, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_idx(
    path: str | os.PathLike, *, expected_magic: Optional[int] = None, expected_md5: Optional[str] = None
) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into a uint8 array, checking header, length and checksum.

    The header's counts are checked against the real length before the data is
    held: for a raw file against its size on disk, for gzip against what
    decompresses, read with a bound of one byte more than the header promises
    (so a 30 kB file claiming 10^9 images costs 30 kB, and a gzip bomb stops at
    the promised length).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"  # the gzip magic
        with (gzip.open if compressed else open)(path, "rb") as f:
            head = _read_bounded(f, 16)
            magic, header, shape = _idx_header(path, head)
            expected_len = header + math.prod(shape)
            if expected_len > MAX_IDX_BYTES:
                raise DataError(
                    f"{path} promises {expected_len:,} bytes of data (shape {' x '.join(map(str, shape))}), more than "
                    f"the {MAX_IDX_BYTES >> 30} GiB vqlib reads; the header is corrupt or the file is not for vqlib"
                )
            if not compressed and os.fstat(f.fileno()).st_size != expected_len:
                size = os.fstat(f.fileno()).st_size
                raise DataError(
                    f"{path} holds {size} bytes, but its header promises {expected_len}; "
                    "the file is truncated or corrupt: provide it again"
                )
            raw = head + _read_bounded(f, expected_len + 1 - len(head))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises these for truncated or corrupt streams
        raise DataError(f"{path} is not a readable gzip file ({exc}); delete it and provide the data again") from None
    if expected_magic is not None and magic != expected_magic:
        kind = "images" if expected_magic == 0x00000803 else "labels"
        raise DataError(f"{path} has magic 0x{magic:08x}, but a file of {kind} has 0x{expected_magic:08x}")
    if len(raw) != expected_len:
        held = f"more than {expected_len}" if len(raw) > expected_len else str(len(raw))
        raise DataError(
            f"{path} holds {held} bytes{' after decompression' if compressed else ''}, but its header "
            f"promises {expected_len}; the file is truncated or corrupt: provide it again"
        )
    if expected_md5 is not None and hashlib.md5(raw).hexdigest() != expected_md5:
        raise DataError(
            f"{path} fails its checksum (MD5 of the content {hashlib.md5(raw).hexdigest()}, "
            f"expected {expected_md5}); the file is corrupt: provide it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _has_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def candidate_dirs(data_dir: Optional[str | os.PathLike] = None) -> list[tuple[str, Path]]:
    """Where the files are looked for, in order: argument, VQLIB_DATA_DIR, project data/, Debian."""
    found = []
    if data_dir is not None:
        found.append(("--data-dir", Path(data_dir)))
    if os.environ.get(ENV_VAR):
        found.append((ENV_VAR, Path(os.environ[ENV_VAR])))
    found.append(("project data folder", paths.data_dir()))
    found.append(("Debian package dataset-fashion-mnist", DEBIAN_DIR))
    return found


def download(target: Optional[Path] = None, *, timeout: float = 30.0) -> Path:
    """Download the official files into `target`, verifying both checksums of each."""
    target = ensure_dir(target or paths.data_dir())
    for name, (magic, content_md5, gz_md5) in FILES.items():
        dest = target / name
        if dest.is_file():
            continue
        errors = []
        for base in DOWNLOAD_BASES:
            try:
                with atomic_path(dest) as tmp:
                    with urllib.request.urlopen(base + name, timeout=timeout) as response, open(tmp, "wb") as out:
                        shutil.copyfileobj(response, out)
                    digest = hashlib.md5(tmp.read_bytes()).hexdigest()
                    if digest != gz_md5:
                        raise DataError(f"downloaded {name} has MD5 {digest}, expected {gz_md5}")
                    read_idx(tmp, expected_magic=magic, expected_md5=content_md5)
                break
            except (OSError, DataError) as exc:
                errors.append(f"{base}: {exc}")
        else:
            raise DataError(f"could not download {name} ({'; '.join(errors)})")
    return target


def find_data_dir(data_dir: Optional[str | os.PathLike] = None, *, allow_download: bool = True) -> Path:
    """The first folder holding all four files; downloads them when none has them and it is allowed."""
    if data_dir is not None and not _has_files(Path(data_dir)):
        missing = [n for n in FILES if not (Path(data_dir) / n).is_file()]
        raise DataError(
            f"the data folder {data_dir} lacks {', '.join(missing)}; "
            + HOW_TO_PROVIDE.format(download_dir=paths.data_dir())
        )
    for _, folder in candidate_dirs(data_dir):
        if _has_files(folder):
            return folder
    how = HOW_TO_PROVIDE.format(download_dir=paths.data_dir())
    if not allow_download:
        raise DataError(
            f"no FashionMNIST files found (looked in {', '.join(str(f) for _, f in candidate_dirs())}); {how}"
        )
    try:
        return download()
    except DataError as exc:
        raise DataError(f"no FashionMNIST files found and the download failed ({exc}); {how}") from None


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class FashionMNIST:
    """The three splits as uint8 images (N, 28, 28) and int64 labels (N,), on the CPU."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: Path

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split must be 'train', 'val' or 'test', not {name!r}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


def validation_indices(labels: np.ndarray, size: int = VALIDATION_SIZE, seed: int = SPLIT_SEED) -> np.ndarray:
    """A stratified, seeded choice of `size` indices: size / 10 of each class, sorted."""
    return stratified_subset(labels, size // NUM_CLASSES, seed)


def stratified_subset(labels: np.ndarray | torch.Tensor, per_class: int, seed: int) -> np.ndarray:
    """`per_class` indices of every class, chosen with a seeded generator, sorted."""
    labels = np.asarray(labels)
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise ConfigError(
                f"asked for {per_class} images of class {CLASS_NAMES[c]}, but the split has only {len(members)}"
            )
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def read_idx_pair(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    *,
    images_md5: Optional[str] = None,
    labels_md5: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, rows, cols) uint8 and labels (N,) int64 from two IDX files of the same N."""
    images = read_idx(images_path, expected_magic=0x00000803, expected_md5=images_md5)
    labels = read_idx(labels_path, expected_magic=0x00000801, expected_md5=labels_md5)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the two files do not belong together"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_path} holds label {labels.max()}, but FashionMNIST has only classes 0-9")
    return images, labels.astype(np.int64)


@lru_cache(maxsize=2)
def _load(folder: Path) -> FashionMNIST:
    arrays = {}
    for split in ("train", "t10k"):
        img_name, lab_name = f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz"
        images, labels = read_idx_pair(
            folder / img_name, folder / lab_name, images_md5=FILES[img_name][1], labels_md5=FILES[lab_name][1]
        )
        arrays[f"{split}-images"], arrays[f"{split}-labels"] = images, labels
    train_x, train_y = arrays["train-images"], arrays["train-labels"]
    val = validation_indices(train_y)
    keep = np.setdiff1d(np.arange(len(train_y)), val)
    t = torch.from_numpy
    return FashionMNIST(
        train_images=t(train_x[keep].copy()),
        train_labels=t(train_y[keep].copy()),
        val_images=t(train_x[val].copy()),
        val_labels=t(train_y[val].copy()),
        test_images=t(arrays["t10k-images"].copy()),
        test_labels=t(arrays["t10k-labels"]),
        source=folder,
    )


def load_fashion_mnist(data_dir: Optional[str | os.PathLike] = None, *, allow_download: bool = True) -> FashionMNIST:
    """Load (once per process) and split the real FashionMNIST: 55,000 train, 5,000 val, 10,000 test."""
    return _load(find_data_dir(data_dir, allow_download=allow_download).resolve())


def subset(
    images: torch.Tensor, labels: torch.Tensor, size: Optional[int], seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified subset of `size` images (all of them when `size` is None)."""
    if size is None or size == len(labels):
        return images, labels
    if size > len(labels):
        raise ConfigError(f"train_subset is {size}, but the split has only {len(labels)} images")
    if size < NUM_CLASSES:
        raise ConfigError(f"train_subset must be at least {NUM_CLASSES} (one image per class), not {size}")
    per_class, extra = divmod(size, NUM_CLASSES)
    idx = stratified_subset(labels, per_class, seed)
    if extra:  # the remainder, drawn from the images not chosen yet
        rest = np.setdiff1d(np.arange(len(labels)), idx)
        rng = np.random.Generator(np.random.PCG64(seed + 1))
        idx = np.sort(np.concatenate([idx, rng.choice(rest, extra, replace=False)]))
    idx = torch.from_numpy(idx)
    return images[idx], labels[idx]


def class_examples(labels: np.ndarray | torch.Tensor, per_class: int, *, seed: int = 0) -> np.ndarray:
    """(classes, per_class) indices: `per_class` images of each class, chosen at random (seeded)."""
    labels = np.asarray(labels)
    rng = np.random.Generator(np.random.PCG64(seed))
    rows = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ConfigError(
                f"asked for {per_class} images of class {CLASS_NAMES[c]}, but there are only {len(members)}"
            )
        rows.append(np.sort(rng.permutation(members)[:per_class]))
    return np.stack(rows)


def to_float(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1], on `device`.

    Float images (N, 28, 28), already in [0, 1], only gain the channel axis: the
    Python API (vqlib.api) passes them through the same functions as uint8 ones.
    """
    if images.dtype.is_floating_point:
        return images.to(device, torch.float32).unsqueeze(1)
    return images.to(device).unsqueeze(1).float().div_(255.0)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    generator: Optional[torch.Generator] = None,
    shuffle: bool = True,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """Index tensors of consecutive batches over a (shuffled) permutation of range(n)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
