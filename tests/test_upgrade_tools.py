"""The upgrade against real Caffe on the published V1 models (../shared): our upgrade_net_proto_text/_binary match
its tools' output byte for byte and the upgraded nets run like Caffe; the tool scripts themselves."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, shared_path
from upgrade_util import V1_FEATURES, V1_FEATURES_UPGRADED, assert_same_net, parse

from pipeline.errors import WeightsError
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import read_net
from pipeline.text.upgrade import net_needs_upgrade
from pipeline.weights.io import read_caffemodel
from pipeline.weights.upgrade_tools import upgrade_net_proto_binary, upgrade_net_proto_text

V1_CASES = [
    ("lenet_v1/lenet.prototxt", "lenet_everpeace_v1"),
    ("cifar10_quick_v1/cifar10_quick.prototxt", "cifar10_quick_everpeace"),
]


# ----- against Caffe's own upgrade output -----------------------------------------------------------------
@pytest.mark.parametrize("source, case", V1_CASES)
def test_v1_prototxt_upgrades_like_caffe(source, case):
    # net.upgraded.prototxt is the raw output of Caffe's upgrade_net_proto_text: the whole NetParameter
    # compares equal (the tool writes every field it keeps, so nothing needs ignoring here).
    original = shared_path("caffe-models", source)
    reference = shared_path("caffe-reference", "forward", case, "net.upgraded.prototxt")
    assert_same_net(read_net(original), parse(reference.read_text()))


@pytest.mark.parametrize(
    "source",
    [
        "caffe-models/lenet_v1/lenet.prototxt",
        "caffe-models/cifar10_quick_v1/cifar10_quick.prototxt",
        "caffe-reference/forward/cifar10_full_jwcom79_h5/net.original.prototxt",  # V2 with input_shape fields
    ],
)
def test_upgrade_tool_text_is_byte_identical_to_caffes(source, tmp_path):
    original = shared_path(*source.split("/"))
    case = {"lenet.prototxt": "lenet_everpeace_v1", "cifar10_quick.prototxt": "cifar10_quick_everpeace"}
    reference = shared_path(
        "caffe-reference", "forward", case.get(original.name, original.parent.name), "net.upgraded.prototxt"
    )
    upgrade_net_proto_text(original, tmp_path / "out.prototxt")
    assert (tmp_path / "out.prototxt").read_text() == reference.read_text()


@pytest.mark.parametrize("source, case", V1_CASES)
def test_upgrade_tool_text_output_and_reread(source, case, tmp_path):
    original = shared_path("caffe-models", source)
    reference = parse(shared_path("caffe-reference", "forward", case, "net.upgraded.prototxt").read_text())
    out = tmp_path / "upgraded.prototxt"
    assert upgrade_net_proto_text(original, out) is True
    written = parse(out.read_text())
    assert_same_net(written, reference)
    # The upgraded file reads back as the same net, and nothing is left to upgrade.
    assert not net_needs_upgrade(written)
    assert_same_net(read_net(out), read_net(original))
    again = tmp_path / "again.prototxt"
    assert upgrade_net_proto_text(out, again) is False
    assert_same_net(parse(again.read_text()), reference)


@pytest.mark.parametrize("source, case", V1_CASES)
def test_upgraded_v1_net_runs_like_caffe(source, case):
    folder = shared_path("caffe-reference", "forward", case)
    net = Net(read_net(shared_path("caffe-models", source)), phase="TEST")
    with np.load(folder / "input.npz") as inputs:
        data = torch.from_numpy(inputs["data"])
    from pipeline.weights.io import copy_weights

    copy_weights(net, folder / "weights.caffemodel")
    out = net(data=data)
    with np.load(folder / "blobs.npz") as blobs:
        np.testing.assert_allclose(out["prob"].detach().numpy(), blobs["prob"], atol=1e-5)


def test_v1_train_test_data_layers():
    net = read_net(shared_path("caffe-models", "lenet_v1", "lenet_train_test.prototxt"))
    train, test = net.layer[0], net.layer[1]
    assert (train.type, train.name, list(train.top)) == ("Data", "mnist", ["data", "label"])
    assert train.include[0].phase == caffe_pb2.TRAIN and test.include[0].phase == caffe_pb2.TEST
    assert train.transform_param.scale == pytest.approx(0.00390625)
    assert train.data_param.backend == caffe_pb2.DataParameter.LMDB and train.data_param.batch_size == 64
    assert [layer.type for layer in net.layer[-2:]] == ["Accuracy", "SoftmaxWithLoss"]
    assert not net.layers and not net.input


# ----- binary tool -----------------------------------------------------------------------------------------
def test_upgrade_tool_binary(tmp_path):
    source = shared_path("caffe-models", "lenet_v1", "lenet_iter_10000.caffemodel")
    out = tmp_path / "lenet_v2.caffemodel"
    assert upgrade_net_proto_binary(source, out) is True
    raw_v1 = caffe_pb2.NetParameter()
    raw_v1.ParseFromString(source.read_bytes())
    written = caffe_pb2.NetParameter()
    written.ParseFromString(out.read_bytes())
    assert not written.layers and [layer.name for layer in written.layer] == [layer.name for layer in raw_v1.layers]
    for old, new in zip(raw_v1.layers, written.layer):
        assert list(new.blobs) == list(old.blobs)  # legacy num/channels/height/width kept, as Caffe's tool does
    assert read_caffemodel(out) == read_caffemodel(source)
    again = tmp_path / "again.caffemodel"
    assert upgrade_net_proto_binary(out, again) is False
    assert again.read_bytes() == out.read_bytes()


def test_upgrade_tool_binary_bad_input(tmp_path):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\x12\xff\xff\xff")
    with pytest.raises(WeightsError, match="bad.caffemodel"):
        upgrade_net_proto_binary(bad, tmp_path / "out.caffemodel")
    assert not (tmp_path / "out.caffemodel").exists()


def _run_tool(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_tool_scripts(tmp_path):
    v1 = tmp_path / "v1.prototxt"
    v1.write_text(V1_FEATURES)
    out = tmp_path / "v2.prototxt"
    done = _run_tool("upgrade_net_proto_text.py", v1, out)
    assert done.returncode == 0, done.stderr
    assert_same_net(parse(out.read_text()), parse(V1_FEATURES_UPGRADED))
    assert _run_tool("upgrade_net_proto_text.py", v1).returncode == 1
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layers { name: "a" type: NOT_A_TYPE }')
    failed = _run_tool("upgrade_net_proto_text.py", bad, tmp_path / "never.prototxt")
    assert failed.returncode == 2 and "bad.prototxt" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "never.prototxt").exists()
    failed = _run_tool("upgrade_net_proto_binary.py", bad, tmp_path / "never.caffemodel")
    assert failed.returncode == 2 and "bad.prototxt" in failed.stderr and "Traceback" not in failed.stderr


def test_tools_are_thin():
    for name in ("upgrade_net_proto_text.py", "upgrade_net_proto_binary.py"):
        assert len(Path(ROOT / "tools" / name).read_text().splitlines()) < 50
