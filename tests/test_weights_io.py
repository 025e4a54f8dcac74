"""Weights I/O: caffemodel and HDF5 round trips in Caffe's exact write layout, the real V1/V2/HDF5 caffemodels and
mean files (../shared), unusual blob encodings, and loading without holding a copy of the file."""

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import SHARED, shared_cases, shared_path
from weights_util import TINY, tiny_net

from pipeline.errors import NetBuildError, WeightsError
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import net_from_string, parse_text, read_net
from pipeline.text.upgrade import upgrade_net
from pipeline.weights.io import (
    copy_weights,
    layer_arrays_from_caffemodel,
    net_to_proto,
    read_caffemodel,
    read_hdf5_weights,
    read_mean,
    read_npz_weights,
    save_caffemodel,
    save_caffemodel_h5,
)


def blobs_of(net) -> dict[str, list[torch.Tensor]]:
    return {name: [b.detach().clone() for b in blobs] for name, blobs in net.params.items()}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for x, y in zip(a[name], b[name]):
            assert x.shape == y.shape and torch.equal(x.float(), y.float()), name


# ----- round trips -----------------------------------------------------------------------------------------
def test_caffemodel_round_trip_is_bit_identical(tiny_file):
    net, path = tiny_file
    other = tiny_net(seed=7)
    report = copy_weights(other, path)
    assert sorted(report.copied) == sorted(net.params) and not report.missing
    assert report.ignored == []
    assert_bitwise_equal(blobs_of(other), blobs_of(net))
    # The in-memory message is the file, byte for byte; the full protobuf reader agrees with the streaming one.
    assert net_to_proto(net).SerializeToString() == path.read_bytes()
    full = {layer.name: [np.asarray(b.data) for b in layer.blobs] for layer in read_caffemodel(path).layer}
    for name, arrays in layer_arrays_from_caffemodel(path).items():
        assert all(np.array_equal(x.ravel(), y) for x, y in zip(arrays, full[name]))


def test_written_layout_is_caffes(tiny_file):
    net, path = tiny_file
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(path.read_bytes())
    assert proto.name == "tiny" and not proto.layers and not proto.input
    assert "conv_prelu_0_split" in [layer.name for layer in proto.layer]  # Caffe's ToProto includes Splits
    assert all(layer.phase == caffe_pb2.TEST for layer in proto.layer)
    by_name = {layer.name: layer for layer in proto.layer}
    assert [p.lr_mult for p in by_name["bn"].param] == [0, 0, 0]  # as BatchNormLayer::LayerSetUp adds them
    for layer in proto.layer:
        for blob in layer.blobs:
            assert not any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
            assert not blob.diff and not blob.double_data
    assert list(by_name["conv"].blobs[0].shape.dim) == [4, 3, 3, 3]
    assert not by_name["prelu"].blobs[0].HasField("shape") and len(by_name["prelu"].blobs[0].data) == 1  # 0-axis


def test_hdf5_round_trip_and_layout(tmp_path):
    net = tiny_net()
    path = tmp_path / "tiny.caffemodel.h5"
    save_caffemodel_h5(net, path)
    other = tiny_net(seed=3)
    report = copy_weights(other, path)
    assert not report.missing
    assert_bitwise_equal(blobs_of(other), blobs_of(net))
    with h5py.File(path, "r") as f:
        assert set(f["data"]) == {layer.name for layer in net.layers}  # every layer has a group
        assert sorted(f["data/ip_a"]) == ["0", "1"] and sorted(f["data/ip_b"]) == ["1"]  # shared: owner only
        assert f["data/prelu/0"].shape == () and f["data/conv/0"].dtype == np.float32
    arrays = read_hdf5_weights(path)
    assert sorted(arrays) == ["bn", "conv", "ip_a", "ip_b", "prelu", "scale"] and arrays["ip_b"][0] is None


def test_float64_net_round_trip(tiny_file):
    net, path = tiny_file
    wide = tiny_net(seed=5).to(torch.float64)
    copy_weights(wide, path)
    assert_bitwise_equal(blobs_of(wide), blobs_of(net))
    save_caffemodel(wide, path.with_name("wide.caffemodel"))
    assert path.with_name("wide.caffemodel").read_bytes() == path.read_bytes()


def test_failed_save_keeps_the_old_file(tiny_file, monkeypatch):
    net, path = tiny_file
    before = path.read_bytes()
    import pipeline.weights.io as weights

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(weights, "write_caffemodel", explode)
    with pytest.raises(RuntimeError):
        save_caffemodel(tiny_net(seed=9), path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["tiny.caffemodel"]
    with pytest.raises(WeightsError, match="cannot write"):
        save_caffemodel_h5(net, path.parent / "no_such_dir" / "x.caffemodel.h5")


# ----- real files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, prototxt, case",
    [
        ("lenet_v1/lenet_iter_10000.caffemodel", "lenet_v1/lenet.prototxt", "lenet_everpeace_v1"),
        (
            "cifar10_quick_v1/cifar10_quick_iter_5000.caffemodel",
            "cifar10_quick_v1/cifar10_quick.prototxt",
            "cifar10_quick_everpeace",
        ),
        (
            "cifar10_full_h5/cifar10_full_iter_70000.caffemodel.h5",
            "cifar10_full_h5/cifar10_full.prototxt",
            "cifar10_full_jwcom79_h5",
        ),
    ],
)
def test_real_caffemodels_load_as_caffe_loads_them(model, prototxt, case):
    weights = shared_path("caffe-models", model)
    reference = read_npz_weights(shared_path("caffe-reference", "forward", case, "weights.npz"))
    net = Net(read_net(shared_path("caffe-models", prototxt)), phase="TEST")
    report = copy_weights(net, weights)
    assert sorted(report.copied) == sorted(reference) and not report.missing
    for name, arrays in reference.items():
        for blob, array in zip(net.params[name], arrays):
            assert np.array_equal(blob.detach().numpy(), array), name
    if weights.suffix != ".h5":  # the V1 files: legacy 4-D blobs, upgraded to V2 layers on read
        full = read_caffemodel(weights)
        assert not full.layers and all(layer.type for layer in full.layer)
        arrays = layer_arrays_from_caffemodel(weights)
        assert all(
            np.array_equal(arrays[n][i].reshape(a.shape), a) for n, r in reference.items() for i, a in enumerate(r)
        )


CASES_WITH_CAFFEMODEL = [
    c
    for c in shared_cases("caffe-reference", "forward")
    if (SHARED / "caffe-reference/forward" / c / "weights.caffemodel").exists()
]


@pytest.mark.parametrize("case", CASES_WITH_CAFFEMODEL or ["<no ../shared>"])
def test_save_matches_caffe_net_save_byte_for_byte(case, tmp_path):
    """weights.caffemodel is real Caffe's net.save(); loading it and saving again gives the same bytes."""
    folder = shared_path("caffe-reference", "forward", case)
    meta = json.loads((folder / "meta.json").read_text())
    param = upgrade_net(parse_text((folder / "net.prototxt").read_text(), caffe_pb2.NetParameter()))
    try:
        net = Net(param, phase=meta.get("phase", "TRAIN"), seed=0)
    except NetBuildError as exc:
        pytest.skip(f"net does not build here yet: {exc}")
    copy_weights(net, folder / "weights.caffemodel")
    save_caffemodel(net, tmp_path / "ours.caffemodel")
    assert (tmp_path / "ours.caffemodel").read_bytes() == (folder / "weights.caffemodel").read_bytes()


def test_save_hdf5_matches_caffe(tmp_path):
    folder = shared_path("caffe-reference", "forward", "cifar10_full_jwcom79_h5")
    net = Net(parse_text((folder / "net.prototxt").read_text(), caffe_pb2.NetParameter()), phase="TEST")
    copy_weights(net, folder / "weights.caffemodel.h5")
    save_caffemodel_h5(net, tmp_path / "ours.caffemodel.h5")
    with h5py.File(tmp_path / "ours.caffemodel.h5", "r") as ours, h5py.File(folder / "weights.caffemodel.h5") as ref:
        names, ref_names = [], []
        ours.visit(names.append)
        ref.visit(ref_names.append)
        assert names == ref_names
        for name in names:
            if isinstance(ref[name], h5py.Dataset):
                assert ours[name].dtype == ref[name].dtype and np.array_equal(ours[name][()], ref[name][()])


def test_read_mean_binaryproto():
    mean = read_mean(shared_path("caffe-models", "cifar10_quick_v1", "mean.binaryproto"))
    assert mean.shape == (1, 3, 32, 32) and mean.dtype == np.float32
    assert 0 <= mean.min() and mean.max() <= 255


def test_read_mean_npy(tmp_path):
    np.save(tmp_path / "mean.npy", np.arange(12, dtype=np.float64).reshape(3, 2, 2))
    assert read_mean(tmp_path / "mean.npy").dtype == np.float32


# ----- memory ----------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


@pytest.mark.parametrize("suffix", [".caffemodel", ".caffemodel.h5"])
def test_loading_holds_no_copy_of_the_file(tmp_path, suffix):
    """Peak memory while copying weights into a built net grows by a small part of the file size, not by it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (the peak) to the current RSS
            f.write("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    text = TINY.split('layer { name: "conv"')[0] + (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 80000 } }'
    )
    net = Net(net_from_string(text), phase="TEST")  # 80000 x 108 floats: a 35 MB file
    path = tmp_path / f"big{suffix}"
    (save_caffemodel if suffix == ".caffemodel" else save_caffemodel_h5)(net, path)
    size_kib = path.stat().st_size // 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS")
    copy_weights(net, path)
    assert _rss_kib("VmHWM") - before < size_kib // 10


def test_unusual_blob_encodings(tmp_path):
    """Floats written one by one (not packed) and double_data (Caffe prefers it when present) both load."""
    from pipeline.weights.wire import FIXED32, key, len_header

    weights = np.arange(6, dtype=np.float32)
    unpacked = b"".join(key(5, FIXED32) + np.float32(v).tobytes() for v in weights)
    shape = caffe_pb2.BlobShape(dim=[3, 2]).SerializeToString()
    blob0 = unpacked + len_header(7, len(shape)) + shape
    blob1 = caffe_pb2.BlobProto(double_data=[0.5, 1.5, 2.5], shape=caffe_pb2.BlobShape(dim=[3])).SerializeToString()
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct").SerializeToString()
    layer += len_header(7, len(blob0)) + blob0 + len_header(7, len(blob1)) + blob1
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(caffe_pb2.NetParameter(name="n").SerializeToString() + len_header(100, len(layer)) + layer)
    text = 'layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2 } } }\n'
    text += 'layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" inner_product_param { num_output: 3 } }'
    for dtype in (torch.float32, torch.float64):
        net = Net(net_from_string(text)).to(dtype)
        copy_weights(net, path)
        assert net.params["ip"][0].tolist() == [[0, 1], [2, 3], [4, 5]] and net.params["ip"][1].tolist() == [
            0.5,
            1.5,
            2.5,
        ]
    full = read_caffemodel(path).layer[0].blobs
    assert list(full[0].data) == list(weights) and list(full[1].double_data) == [0.5, 1.5, 2.5]
