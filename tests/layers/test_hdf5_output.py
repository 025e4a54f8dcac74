"""HDF5Output: Caffe's datasets ("data", "label") in legacy 4-D shapes, read back by HDF5Data; one batch per net."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from pipeline.errors import DataError, NetBuildError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string

SOURCE = """layer {{ name: "src" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: 5 dim: 2 dim: 3 dim: 4 }} shape {{ {label_dims} }}
    data_filler {{ type: "uniform" min: -3 max: 3 }} data_filler {{ type: "uniform" min: 0 max: 9 }} }} }}
"""
OUTPUT = """layer { name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
  hdf5_output_param { file_name: "%s" } }
"""


def output_net(file_name="out.h5", label_dims="dim: 5", seed=3):
    return Net(net_from_string(SOURCE.format(label_dims=label_dims) + OUTPUT % file_name), seed=seed)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_round_trip_through_hdf5_data(folder):
    net = output_net()
    net.forward()
    data, label = net.blobs["data"].data.numpy(), net.blobs["label"].data.numpy()
    with h5py.File(folder / "out.h5", "r") as f:
        assert sorted(f) == ["data", "label"]
        assert f["data"].dtype == np.float32 and f["data"].shape == (5, 2, 3, 4)
        # Caffe writes num, channels, height, width: a (N,) label is stored as (N, 1, 1, 1).
        assert f["label"].shape == (5, 1, 1, 1)
    (folder / "list.txt").write_text("out.h5\n")
    reader = Net(
        net_from_string(
            'layer { name: "h5" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "list.txt" batch_size: 5 } }'
        )
    )
    back = reader.forward()
    np.testing.assert_array_equal(back["data"].numpy(), data)
    np.testing.assert_array_equal(back["label"].numpy().reshape(-1), label)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_two_axis_label_and_double_net(folder):
    net = output_net(label_dims="dim: 5 dim: 2").double()
    net.forward()
    with h5py.File("out.h5", "r") as f:
        assert f["label"].shape == (5, 2, 1, 1) and f["label"].dtype == np.float64
        np.testing.assert_array_equal(f["label"][()].reshape(5, 2), net.blobs["label"].data.numpy())


def test_second_forward_fails_as_in_caffe_keeping_the_first_batch(folder):
    net = output_net()
    net.forward()
    first = net.blobs["data"].data.numpy().copy()
    with pytest.raises(DataError, match=r"layer 'out' \(HDF5Output\).*'out.h5' already holds"):
        net.forward()
    with h5py.File("out.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][()], first)


def test_file_is_written_at_forward_not_set_up(folder):
    (folder / "out.h5").write_bytes(b"old")
    output_net()
    assert (folder / "out.h5").read_bytes() == b"old"


@pytest.mark.parametrize(
    "file_name, label_dims, message",
    [
        ("missing/out.h5", "dim: 5", r"layer 'out' \(HDF5Output\).*'missing/out.h5'.*folder 'missing' does not exist"),
        ("", "dim: 5", "file_name is not set"),
        ("out.h5", "dim: 4", r"data blob 'data' \[5, 2, 3, 4\] and label blob 'label' \[4\].*same batch size"),
        ("out.h5", "dim: 5 dim: 1 dim: 1 dim: 1 dim: 1", "at most 4 axes"),
    ],
)
def test_bad_set_up(folder, file_name, label_dims, message):
    with pytest.raises(NetBuildError, match=message):
        output_net(file_name, label_dims)


def test_bottom_counts_and_no_backward(folder):
    text = SOURCE.format(label_dims="dim: 5") + (
        'layer { name: "out" type: "HDF5Output" bottom: "data" hdf5_output_param { file_name: "o.h5" } }'
    )
    with pytest.raises(NetBuildError, match="exactly 2 bottom"):
        Net(net_from_string(text))
    net = output_net()
    assert not net.layers[-1].has_backward
    with torch.no_grad():
        net.forward()
    assert (folder / "out.h5").is_file()


def test_v1_hdf5_output_upgrades_to_the_layer(folder):
    v1 = net_from_string(
        'layers { name: "d" type: DUMMY_DATA top: "data" top: "label" dummy_data_param { num: 2 channels: 3 '
        "height: 1 width: 1 num: 2 channels: 1 height: 1 width: 1 } } "
        'layers { name: "out" type: HDF5_OUTPUT bottom: "data" bottom: "label" '
        'hdf5_output_param { file_name: "v1.h5" } }'
    )
    net = Net(v1)  # net_from_string upgrades V1 nets as Caffe does
    assert net.layers[-1].type_name == "HDF5Output"
    net.forward()
    with h5py.File("v1.h5", "r") as f:
        assert f["data"].shape == (2, 3, 1, 1) and f["label"].shape == (2, 1, 1, 1)
