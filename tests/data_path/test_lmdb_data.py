"""Data layer over LMDBs written by our converters: bit-identical values, key order, wrap-around, record kinds."""

import gzip
import struct

import lmdb
import numpy as np
import pytest
import torch

from pipeline.data.convert import convert_mnist, main_convert_mnist
from pipeline.data.images import encode_image
from pipeline.data.lmdb_source import LmdbReader, LmdbWriter, make_datum, make_encoded_datum
from pipeline.data.prefetch import data_wait_seconds
from pipeline.proto import caffe_pb2

from .helpers import caffe_transform, data_layer, data_net, make_db, random_images


def write_idx(path, array: np.ndarray, magic: int, compress: bool):
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_round_trip_is_bit_identical(tmp_path, compress):
    images, labels = random_images(150, (28, 28), seed=3)
    write_idx(tmp_path / "img", images, 2051, compress)
    write_idx(tmp_path / "lab", labels, 2049, compress)
    db = tmp_path / "mnist_lmdb"
    assert convert_mnist(tmp_path / "img", tmp_path / "lab", db) == 150

    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
        datum = caffe_pb2.Datum.FromString(txn.get(b"00000007"))
    assert keys == [f"{i:08d}" for i in range(150)]
    assert (datum.channels, datum.height, datum.width, datum.label) == (1, 28, 28, labels[7])
    assert datum.data == images[7].tobytes() and not datum.encoded

    net = data_net(data_layer(db, 64, transform="scale: 0.00390625"))
    assert net.blob_shapes == {"data": (64, 1, 28, 28), "label": (64,)}
    order = np.arange(64 * 3) % 150  # the reader wraps to the first record
    for batch in range(3):
        net.forward()
        rows = order[batch * 64 : (batch + 1) * 64]
        data, label = net.blobs["data"].data, net.blobs["label"].data
        assert data.dtype == torch.float32 and label.dtype == torch.float32
        np.testing.assert_array_equal(data.numpy(), images[rows][:, None].astype(np.float32) * np.float32(1 / 256))
        np.testing.assert_array_equal(label.numpy(), labels[rows].astype(np.float32))


def test_convert_mnist_command_line(tmp_path):
    images, labels = random_images(5, (28, 28))
    write_idx(tmp_path / "img.gz", images, 2051, True)
    write_idx(tmp_path / "lab.gz", labels, 2049, True)
    assert main_convert_mnist([str(tmp_path / "img.gz"), str(tmp_path / "lab.gz"), str(tmp_path / "db")]) == 0
    assert LmdbReader(tmp_path / "db").entries == 5
    assert main_convert_mnist([str(tmp_path / "img.gz"), str(tmp_path / "lab.gz"), str(tmp_path / "db")]) == 1


def test_data_only_top_and_transform_in_layer(tmp_path):
    images, _ = make_db(tmp_path / "db", count=8, shape=(3, 6, 5))
    net = data_net(
        data_layer(
            tmp_path / "db",
            4,
            tops=("data",),
            transform="mean_value: 9 mean_value: 99 mean_value: 199 scale: 0.5 crop_size: 4",
        ),
        phase="TEST",
    )
    assert net.blob_shapes == {"data": (4, 3, 4, 4)}
    out = net.forward()["data"].numpy()
    expected = [caffe_transform(x, 0.5, mean_values=[9, 99, 199], crop=4, h_off=1, w_off=0) for x in images[:4]]
    np.testing.assert_array_equal(out, np.stack(expected))


def test_encoded_and_float_records(tmp_path):
    rng = np.random.default_rng(1)
    color = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    gray = rng.integers(0, 256, (1, 5, 4), dtype=np.uint8)
    with LmdbWriter(tmp_path / "png") as db:
        db.put("0", make_encoded_datum(encode_image(color, "png"), 3))
        db.put("1", make_encoded_datum(encode_image(color, "png"), 4))
    net = data_net(data_layer(tmp_path / "png", 2))
    np.testing.assert_array_equal(net.forward()["data"].numpy()[0], color.astype(np.float32))
    assert net.blobs["label"].data.tolist() == [3.0, 4.0]

    with LmdbWriter(tmp_path / "gray") as db:
        db.put("0", make_encoded_datum(encode_image(gray, "png"), 0))
    assert data_net(data_layer(tmp_path / "gray", 1)).blob_shapes["data"] == (1, 1, 5, 4)
    forced = data_net(data_layer(tmp_path / "gray", 1, transform="force_color: true"))
    np.testing.assert_array_equal(forced.forward()["data"].numpy()[0], np.repeat(gray, 3, 0).astype(np.float32))

    floats = rng.normal(size=(2, 3, 3)).astype(np.float32)
    with LmdbWriter(tmp_path / "float") as db:
        db.put("0", make_datum(floats, 1))
    np.testing.assert_array_equal(data_net(data_layer(tmp_path / "float", 1)).forward()["data"].numpy()[0], floats)


def test_rand_skip_mirror_and_seed(tmp_path):
    images, _ = make_db(tmp_path / "db", count=20)
    layer = data_layer(tmp_path / "db", 5, extra="rand_skip: 10", transform="mirror: true")
    first = [data_net(layer, seed=s).forward()["data"].numpy() for s in (1, 1, 2, 3, 4)]
    np.testing.assert_array_equal(first[0], first[1])
    flat = images.astype(np.float32)
    for batch in first:
        # a run of consecutive records from some start below rand_skip, each maybe mirrored
        start = [
            s for s in range(10) if np.array_equal(batch[0], flat[s]) or np.array_equal(batch[0], flat[s, :, :, ::-1])
        ]
        assert start
    assert len({b.tobytes() for b in first}) > 1


def test_net_follows_dtype_and_reports_wait(tmp_path):
    make_db(tmp_path / "db", count=4)
    net = data_net(data_layer(tmp_path / "db", 2)).double()
    out = net.forward()
    assert out["data"].dtype == torch.float64 and out["label"].dtype == torch.float64
    assert data_wait_seconds(net) >= 0.0
    assert "data" not in net.state_dict() and not list(net.buffers())


def test_two_nets_read_one_lmdb_at_once(tmp_path):
    images, _ = make_db(tmp_path / "db", count=6)
    train = data_net(data_layer(tmp_path / "db", 2), phase="TRAIN")
    test = data_net(data_layer(tmp_path / "db", 3), phase="TEST")
    np.testing.assert_array_equal(train.forward()["data"].numpy(), images[:2].astype(np.float32))
    np.testing.assert_array_equal(test.forward()["data"].numpy(), images[:3].astype(np.float32))
    np.testing.assert_array_equal(train.forward()["data"].numpy(), images[2:4].astype(np.float32))
