"""Features off the shelf: the extractor returns the net's blobs, files round-trip exactly, classifiers score."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.net import Net
from pipeline.text.prototxt import net_from_string
from pipeline.transfer import features as ft
from pipeline.transfer.netedit import TransferError
from pipeline.weights.io import save_caffemodel

ROWS = {"train": 30, "test": 20}
NET = """
name: "feat"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
  hdf5_data_param { source: "train.txt" batch_size: 8 } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
  hdf5_data_param { source: "test.txt" batch_size: 8 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(0)
    for name, rows in ROWS.items():
        y = np.arange(rows) % 2
        x = (rng.randn(rows, 4) + 3 * y[:, None]).astype(np.float32)  # two well separated classes
        with h5py.File(f"{name}.h5", "w") as f:
            f["data"], f["label"] = x, y.astype(np.float32)
        Path(f"{name}.txt").write_text(f"{name}.h5\n")
    save_caffemodel(Net(net_from_string(NET), seed=4), "w.caffemodel")
    return tmp_path


def raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(f"{name}.h5", "r") as f:
        return f["data"][()], f["label"][()]


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_extracted_features_equal_the_nets_blobs(folder, phase):
    param = net_from_string(NET)
    net = ft.build_feature_net(param, ["w.caffemodel"], data_phase=phase)
    got = ft.extract(net, ["ip1", "ip2"], progress=False)
    assert len(got) == ROWS[phase.lower()]  # one pass, the wrapped tail of the last batch cut off
    reference = Net(param, phase="TEST", seed=1)
    from pipeline.weights.io import copy_weights

    copy_weights(reference, "w.caffemodel")
    x, y = raw(phase.lower())
    with torch.no_grad():
        reference(data=torch.from_numpy(x), label=torch.from_numpy(y))
    # ip1 is read after its in-place ReLU (and the TEST-phase Dropout, which passes it through), as Caffe does.
    # Equal up to float32 rounding: the reference is one forward of the whole array, and MKL picks its sgemm
    # kernel by shape and CPU (an AVX-512 Xeon rounded ip2 to -0.5298476 in batches of 8, -0.52984756 whole).
    tol = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.blobs["ip1"], reference.blobs["ip1"].data.numpy(), **tol)
    np.testing.assert_allclose(got.blobs["ip2"], reference.blobs["ip2"].data.numpy(), **tol)
    assert (got.blobs["ip1"] >= 0).all() and np.array_equal(got.labels, y.astype(np.int64))


@pytest.mark.parametrize(
    "fmt, outputs", [("npz", ["f.npz"]), ("hdf5", ["f.h5"]), ("npy", ["a.npy", "b.npy"]), ("lmdb", ["a_db", "b_db"])]
)
def test_feature_files_round_trip(folder, fmt, outputs):
    net = ft.build_feature_net(net_from_string(NET), ["w.caffemodel"])
    got = ft.extract(net, ["ip1", "ip2"], batches=2, progress=False)
    written = ft.write_features(got, outputs)
    for blob, path in zip(["ip1", "ip2"], written * 2 if len(written) == 1 else written):
        back = ft.read_features(path, blob)
        stored = back.blobs[blob].reshape(len(back), -1)
        assert np.array_equal(stored, got.blobs[blob]) and np.array_equal(back.labels, got.labels)


def test_lmdb_features_are_caffe_float_datums(folder):
    from pipeline.data.lmdb_source import LmdbReader
    from pipeline.proto import caffe_pb2

    net = ft.build_feature_net(net_from_string(NET), ["w.caffemodel"])
    got = ft.extract(net, ["ip2"], batches=1, progress=False)
    ft.write_features(got, ["db"], "lmdb")
    reader = LmdbReader("db")
    key, value = reader.first()
    datum = caffe_pb2.Datum.FromString(value)
    assert key == b"0000000000" and reader.entries == 8
    assert (datum.channels, datum.height, datum.width) == (2, 1, 1) and not datum.data
    assert np.array_equal(np.float32(datum.float_data), got.blobs["ip2"][0])
    reader.close()


def test_unknown_blob_fails_before_extracting(folder):
    net = ft.build_feature_net(net_from_string(NET), ["w.caffemodel"])
    with pytest.raises(TransferError, match=re.escape("no blob named 'ip3' to extract (did you mean 'ip2', 'ip1'?")):
        ft.extract(net, ["ip2", "ip3"], progress=False)


@pytest.mark.parametrize("kind", ft.CLASSIFIERS)
def test_classifiers_on_separable_features(kind):
    rng = np.random.RandomState(0)
    y = np.arange(200) % 2
    x = rng.randn(200, 6) + 4 * y[:, None]
    report = ft.classify((x[:150], y[:150]), (x[150:], y[150:]), kind, normalize="standard")
    assert report.accuracy == 1.0 and report.n_train == 150 and report.dims == 6


def test_cli_baseline_and_errors(folder, capsys):
    from pipeline.cli.tools import extract_features as tool

    Path("net.prototxt").write_text(NET)
    base = ["--model", "net.prototxt", "--weights", "w.caffemodel", "--no-progress"]
    assert tool.main(base + ["--blobs", "ip1", "--classifier", "logreg", "--output", "f.npz"]) == 0
    out = capsys.readouterr().out
    assert "logreg on ip1 (5 dims, 30 train / 20 test): accuracy = " in out
    assert Path("f_train.npz").exists() and Path("f_test.npz").exists()
    args = ["--train-features", "f_train.npz", "--test-features", "f_test.npz", "--blobs", "ip1"]
    assert tool.main(args + ["--classifier", "linear_svm"]) == 0
    assert tool.main(base + ["--blobs", "fc7", "--output", "g.npz"]) == 1
    assert "no blob named 'fc7'" in capsys.readouterr().err and not Path("g.npz").exists()


def _lmdb_items(path: str) -> list[tuple[bytes, bytes]]:
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


def test_cli_caffe_positional_form_writes_what_the_flags_write(folder, capsys):
    from pipeline.cli.tools import extract_features as tool

    Path("net.prototxt").write_text(NET)
    # BVLC: extract_features pretrained_net_param feature_extraction_proto_file blobs datasets num_mini_batches db_type
    assert tool.main(["w.caffemodel", "net.prototxt", "ip1,ip2", "pos_ip1,pos_ip2", "3", "lmdb", "CPU"]) == 0
    flags = ["--model", "net.prototxt", "--weights", "w.caffemodel", "--blobs", "ip1,ip2", "--iterations", "3"]
    assert tool.main(flags + ["--output", "flag_ip1,flag_ip2", "--format", "lmdb", "--no-progress"]) == 0
    for blob in ("ip1", "ip2"):
        positional, flagged = _lmdb_items(f"pos_{blob}"), _lmdb_items(f"flag_{blob}")
        assert len(positional) == ROWS["test"] and positional == flagged  # 3 batches of 8, cut to the 20 rows
    capsys.readouterr()
    assert tool.main(["w.caffemodel", "net.prototxt", "ip1", "x", "3", "leveldb"]) == 1
    assert "db_type leveldb is not supported" in capsys.readouterr().err
    assert tool.main(["w.caffemodel", "net.prototxt", "ip1,ip2", "x", "3", "lmdb"]) == 1
    assert "the number of blob names and dataset names must be equal" in capsys.readouterr().err
    assert tool.main(["w.caffemodel", "net.prototxt", "ip1", "x", "three", "lmdb"]) == 1
    assert "num_mini_batches must be a whole number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["w.caffemodel", "net.prototxt", "ip1"])
    args = tool.parse_args(["w.caffemodel", "net.prototxt", "ip1", "x", "3", "lmdb", "GPU", "1", "--no-progress"])
    got = (args.gpu, args.model, args.weights, args.output, args.progress)
    assert got == ("1", "net.prototxt", "w.caffemodel", "x", False)
