"""V0/V1 -> V2 upgrade (Caffe's upgrade_proto.cpp) and the upgrade_net_proto_text/_binary tools."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, shared_path
from fuzz_util import FUZZ, FUZZ_SLOW, TEXT_OPS, mutated, time_limit
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import PrototxtError, WeightsError
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.prototxt import net_from_string, parse_text, read_net
from pipeline.upgrade import (
    net_needs_upgrade,
    upgrade_net,
    upgrade_net_proto_binary,
    upgrade_net_proto_text,
)
from pipeline.upgrade_v1 import DATA_TRANSFORM_LAYERS, V0_TYPES, V1_PARAM_FIELDS, V1_TYPE_NAMES
from pipeline.weights import read_caffemodel

V1_CASES = [
    ("lenet_v1/lenet.prototxt", "lenet_everpeace_v1"),
    ("cifar10_quick_v1/cifar10_quick.prototxt", "cifar10_quick_everpeace"),
]


def parse(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def assert_same_net(ours: caffe_pb2.NetParameter, expected: caffe_pb2.NetParameter) -> None:
    assert text_format.MessageToString(ours) == text_format.MessageToString(expected)
    assert ours == expected


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
    from pipeline.weights import copy_weights

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


# ----- V1 features -----------------------------------------------------------------------------------------
V1_FEATURES = """
name: "v1"
layers { name: "data" type: DATA top: "data" top: "label"
  data_param { source: "db" batch_size: 10 scale: 0.5 mean_file: "m.binaryproto" crop_size: 7 mirror: true }
  include { phase: TRAIN } }
layers { name: "img" type: IMAGE_DATA top: "img" top: "img_label"
  image_data_param { source: "list.txt" scale: 2 mirror: false new_height: 9 }
  transform_param { mean_value: 3 }
  exclude { stage: "deploy" } }
layers { name: "win" type: WINDOW_DATA top: "win" top: "win_label" window_data_param { source: "w" crop_size: 5 } }
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" param: "shared_w" param: "shared_b"
  blob_share_mode: PERMISSIVE blob_share_mode: STRICT blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "conv_b" type: CONVOLUTION bottom: "data" top: "conv_b" param: "shared_w" blobs_lr: 0.5
  convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "loss" type: EUCLIDEAN_LOSS bottom: "conv" bottom: "conv_b" top: "loss" loss_weight: 0.25 }
layers { name: "sig" type: SIGMOID_CROSS_ENTROPY_LOSS bottom: "conv" bottom: "conv_b" loss_param { ignore_label: 2 } }
"""

V1_FEATURES_UPGRADED = """
name: "v1"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.5 mirror: true crop_size: 7 mean_file: "m.binaryproto" }
  data_param { source: "db" batch_size: 10 } }
layer { name: "img" type: "ImageData" top: "img" top: "img_label" exclude { stage: "deploy" }
  transform_param { scale: 2 mirror: false mean_value: 3 }
  image_data_param { source: "list.txt" new_height: 9 } }
layer { name: "win" type: "WindowData" top: "win" top: "win_label" transform_param { crop_size: 5 }
  window_data_param { source: "w" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { name: "shared_w" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 1 }
  param { name: "shared_b" share_mode: STRICT lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b" param { name: "shared_w" lr_mult: 0.5 }
  convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv" bottom: "conv_b" top: "loss" loss_weight: 0.25 }
layer { name: "sig" type: "SigmoidCrossEntropyLoss" bottom: "conv" bottom: "conv_b" loss_param { ignore_label: 2 } }
"""


def test_v1_fields_become_paramspecs_and_transform_param():
    assert_same_net(upgrade_net(parse(V1_FEATURES)), parse(V1_FEATURES_UPGRADED))


def test_v1_type_table_covers_every_enum_value():
    names = {value.name for value in caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values}
    assert {caffe_pb2.V1LayerParameter.LayerType.Name(v) for v in V1_TYPE_NAMES} == names
    assert V1_TYPE_NAMES[caffe_pb2.V1LayerParameter.SOFTMAX_LOSS] == "SoftmaxWithLoss"
    assert V1_TYPE_NAMES[caffe_pb2.V1LayerParameter.IMAGE_DATA] == "ImageData"


@pytest.mark.parametrize("field", V1_PARAM_FIELDS)
def test_every_v1_param_message_is_copied(field):
    v1 = caffe_pb2.NetParameter()
    layer = v1.layers.add(name="x", type=caffe_pb2.V1LayerParameter.RELU)
    getattr(layer, field).SetInParent()
    first = getattr(layer, field).DESCRIPTOR.fields[0]
    if first.message_type is None and not first.is_repeated:
        setattr(getattr(layer, field), first.name, getattr(getattr(layer, field), first.name))
    upgraded = upgrade_net(v1)
    assert upgraded.layer[0].HasField(field)
    assert getattr(upgraded.layer[0], field) == getattr(layer, field)


# ----- V0 --------------------------------------------------------------------------------------------------
V0_DEPLOY = """
name: "TinyV0"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 group: 1 biasterm: true
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
  bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 biasterm: false weight_filler { type: "xavier" } }
  bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_DEPLOY_UPGRADED = """
name: "TinyV0"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 bias_term: true pad: 1 kernel_size: 3 group: 1 stride: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 5 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

V0_DATA = """
name: "V0Data"
force_backward: true
layers { layer { name: "data" type: "data" source: "train_db" meanfile: "mean.binaryproto" batchsize: 32
    cropsize: 24 mirror: true scale: 0.5 rand_skip: 10 } top: "data" top: "label" }
layers { layer { name: "images" type: "images" source: "list.txt" batchsize: 4 shuffle_images: true new_height: 32
    new_width: 30 rand_skip: 1 } top: "img" top: "img_label" }
layers { layer { name: "win" type: "window_data" source: "windows.txt" batchsize: 8 det_fg_threshold: 0.6
    det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16 det_crop_mode: "square" } top: "w" top: "wl" }
layers { layer { name: "h5" type: "hdf5_data" source: "h5.txt" batchsize: 16 } top: "h" top: "hl" }
layers { layer { name: "cat" type: "concat" concat_dim: 0 } bottom: "data" bottom: "img" top: "cat" }
layers { layer { name: "pad" type: "padding" pad: 2 } bottom: "cat" top: "padded" }
layers { layer { name: "pool" type: "pool" pool: MAX kernelsize: 3 stride: 2 } bottom: "padded" top: "pool" }
layers { layer { name: "flat" type: "flatten" } bottom: "pool" top: "flat" }
layers { layer { name: "loss" type: "infogain_loss" source: "H.binaryproto" } bottom: "flat" bottom: "label" }
layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "out.h5" } }
  bottom: "flat" bottom: "label" }
"""

V0_DATA_UPGRADED = """
name: "V0Data"
force_backward: true
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.5 mirror: true crop_size: 24 mean_file: "mean.binaryproto" }
  data_param { source: "train_db" batch_size: 32 rand_skip: 10 } }
layer { name: "images" type: "ImageData" top: "img" top: "img_label"
  image_data_param { source: "list.txt" batch_size: 4 rand_skip: 1 shuffle: true new_height: 32 new_width: 30 } }
layer { name: "win" type: "WindowData" top: "w" top: "wl"
  window_data_param { source: "windows.txt" batch_size: 8 fg_threshold: 0.6 bg_threshold: 0.4 fg_fraction: 0.3
    context_pad: 16 crop_mode: "square" } }
layer { name: "h5" type: "HDF5Data" top: "h" top: "hl" hdf5_data_param { source: "h5.txt" batch_size: 16 } }
layer { name: "cat" type: "Concat" bottom: "data" bottom: "img" top: "cat" concat_param { concat_dim: 0 } }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool"
  pooling_param { pool: MAX pad: 2 kernel_size: 3 stride: 2 } }
layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }
layer { name: "loss" type: "InfogainLoss" bottom: "flat" bottom: "label"
  infogain_loss_param { source: "H.binaryproto" } }
layer { name: "out" type: "HDF5Output" bottom: "flat" bottom: "label" hdf5_output_param { file_name: "out.h5" } }
"""


@pytest.mark.parametrize("v0, expected", [(V0_DEPLOY, V0_DEPLOY_UPGRADED), (V0_DATA, V0_DATA_UPGRADED)])
def test_v0_upgrades_like_caffe(v0, expected):
    assert_same_net(net_from_string(v0), parse(expected))


def test_v0_net_builds_and_runs():
    net = Net(net_from_string(V0_DEPLOY), phase="TEST", seed=1)
    out = net(data=torch.randn(2, 3, 8, 8))
    assert out["prob"].shape == (2, 5)
    assert net.layer("conv1").blobs[0].shape == (4, 3, 3, 3)


def test_v0_padding_layer_feeding_two_convolutions():
    text = """
    input: "x" input_dim: 1 input_dim: 1 input_dim: 5 input_dim: 5
    layers { layer { name: "p" type: "padding" pad: 2 } bottom: "x" top: "p" }
    layers { layer { name: "a" type: "conv" num_output: 1 kernelsize: 3 } bottom: "p" top: "a" }
    layers { layer { name: "b" type: "conv" num_output: 1 kernelsize: 1 } bottom: "p" top: "b" }
    """
    net = net_from_string(text)
    assert [layer.name for layer in net.layer] == ["input", "a", "b"]
    for layer in net.layer[1:]:
        assert list(layer.bottom) == ["x"] and list(layer.convolution_param.pad) == [2]


def test_v0_blobs_are_carried_over():
    v0 = caffe_pb2.NetParameter()
    connection = v0.layers.add(top=["y"], bottom=["x"])
    connection.layer.name, connection.layer.type, connection.layer.num_output = "ip", "innerproduct", 2
    connection.layer.blobs.add(num=1, channels=1, height=2, width=3).data.extend(range(6))
    v0.input.append("x")
    upgraded = upgrade_net(v0)
    assert len(upgraded.layer) == 1 and upgraded.layer[0].name == "ip"  # no shape: the input is just dropped
    assert upgraded.layer[0].blobs[0] == connection.layer.blobs[0]


# ----- input fields, BatchNorm -----------------------------------------------------------------------------
def test_input_fields():
    two = upgrade_net(
        parse(
            'input: "a" input: "b" input_shape { dim: 1 dim: 2 } input_shape { dim: 3 } '
            'input_dim: 9 input_dim: 9 input_dim: 9 input_dim: 9 layer { name: "l" type: "ReLU" }'
        )
    )
    assert [layer.name for layer in two.layer] == ["input", "l"]
    assert [list(s.dim) for s in two.layer[0].input_param.shape] == [[1, 2], [3]]  # input_shape wins
    assert list(two.layer[0].top) == ["a", "b"] and not two.input and not two.input_dim
    bare = upgrade_net(parse('input: "data" layer { name: "l" type: "ReLU" }'))
    assert [layer.name for layer in bare.layer] == ["l"] and not bare.input


def test_batchnorm_with_three_params_is_frozen():
    net = upgrade_net(
        parse(
            'layer { name: "bn" type: "BatchNorm" param { name: "m" lr_mult: 1 } param { lr_mult: 1 }'
            " param { decay_mult: 3 } }"
        )
    )
    assert [(p.name, p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [("m", 0, 0), ("", 0, 0), ("", 0, 0)]
    assert net_needs_upgrade(parse('layer { type: "BatchNorm" param {} param {} param {} }'))
    assert net_needs_upgrade(parse('input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1'))
    assert not net_needs_upgrade(parse('layer { type: "BatchNorm" param {} } input_dim: 1'))


# ----- errors ----------------------------------------------------------------------------------------------
BAD_NETS = {
    "unknown V0 type": ('layers { layer { name: "odd" type: "sparkle" } top: "x" }', "odd"),
    "V0 field on wrong type": ('layers { layer { name: "r" type: "relu" num_output: 3 } top: "x" }', "'r'"),
    "kernelsize on innerproduct": ('layers { layer { name: "f" type: "innerproduct" kernelsize: 3 } top: "y" }', "'f'"),
    "padding into relu": (
        'input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" } '
        'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }',
        "'r'",
    ),
    "unknown V0 bottom": ('layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }', "nowhere"),
    "V0 and V1 mixed": (
        'layers { layer { name: "a" type: "relu" } top: "x" } layers { name: "b" type: RELU bottom: "x" top: "y" }',
        "'b'",
    ),
    "layer and layers": ('layer { name: "new" type: "ReLU" } layers { name: "old" type: RELU }', "layers"),
    "input_dim count": ('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4', "input_dim"),
    "input_shape count": ('input: "a" input: "b" input_shape { dim: 1 }', "input_shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_NETS))
def test_bad_nets_raise_prototxt_error_naming_file_and_layer(case, tmp_path):
    text, fragment = BAD_NETS[case]
    path = tmp_path / "bad_net.prototxt"
    path.write_text(text)
    with pytest.raises(PrototxtError) as info:
        read_net(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


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


def test_parse_errors_in_v1_text_name_the_layer():
    with pytest.raises(PrototxtError, match="'conv9'"):
        parse_text('layers {\n name: "conv9"\n type: CONVOLUTON\n}\n', caffe_pb2.NetParameter(), "x.prototxt")


# ----- fuzzing ---------------------------------------------------------------------------------------------
V2_SMALL = """
name: "v2" input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" param { lr_mult: 1 } param { lr_mult: 1 } param {} }
layer { name: "sw" type: "Swish" bottom: "bn" top: "sw" swish_param { beta: 2 } }
"""
TEXT_PIECES = [
    "layers {",
    "layer {",
    "}",
    "{",
    ":",
    '"',
    "\n",
    "#",
    "name: ",
    "type: ",
    " type: CONVOLUTION ",
    " type: DATA ",
    ' layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" convolution_param { num_output: 2 } } ',
    ' layers { layer { name: "r" type: "relu" } bottom: "x" top: "x" } ',
    " type: POOLING ",
    ' type: "Input" ',
    ' layers { name: "d" type: DATA top: "data" data_param { source: "s" mean_file: "m" crop_size: 2 } } ',
    ' layer { name: "b" type: "BatchNorm" param {} param {} param {} } ',
    " include { phase: TEST } ",
    ' "padding" ',
    ' "conv" ',
    ' "pool" ',
    " input_dim: 4 ",
    ' input: "data" ',
    " input_shape { dim: 2 } ",
    " blobs_lr: 1 ",
    " weight_decay: 0 ",
    ' param: "w" ',
    " blob_share_mode: PERMISSIVE ",
    ' bottom: "data" ',
    ' top: "x" ',
    ' layer { name: "p" type: "padding" pad: 1 } ',
    " num_output: 3 ",
    " kernelsize: 2 ",
    " pad: 1 ",
    " scale: 0.5 ",
    ' mean_file: "m" ',
    " crop_size: 3 ",
    " mirror: true ",
    " data_param { scale: 2 } ",
    " 1e999 ",
    " -1 ",
    " 4294967296 ",
    "\\",
    "\\x",
    "\u00ff",
    "\u20ac",
    "\x00",
    "'",
]


def _feed_prototxt(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    with time_limit(10):
        try:
            net = parse_text(text, caffe_pb2.NetParameter(), "fuzz.prototxt")
            text_format.MessageToString(upgrade_net(net, "fuzz.prototxt"))
        except PrototxtError as exc:
            assert "fuzz.prototxt" in str(exc)


_TEXT_BASES = [t.encode() for t in (V1_FEATURES, V0_DEPLOY, V0_DATA, V2_SMALL)]
_TEXT_PIECES = [p.encode() for p in TEXT_PIECES]


@FUZZ
@given(mutated(_TEXT_BASES, _TEXT_PIECES, ops=TEXT_OPS))
def test_fuzz_prototxt_parse_and_upgrade(data):
    _feed_prototxt(data)


@pytest.mark.slow
@FUZZ_SLOW
@given(mutated(_TEXT_BASES, _TEXT_PIECES, max_ops=12, ops=TEXT_OPS))
def test_fuzz_prototxt_parse_and_upgrade_long(data):
    _feed_prototxt(data)


# Structured fuzzing: random V0/V1 nets built field by field, so every one reaches the upgrade code.
_NAMES = st.sampled_from(["data", "x", "y", "pad", "conv", ""])
_V0_TYPES = sorted(V0_TYPES) + ["padding", "bogus"]
_V1_TYPES = [v.number for v in caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values]


def _value(field, draw):
    if field.type == field.TYPE_STRING:
        return draw(_NAMES)
    if field.type == field.TYPE_BOOL:
        return draw(st.booleans())
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return draw(st.floats(-2, 2, width=32))
    if field.type == field.TYPE_ENUM:
        return draw(st.sampled_from([v.number for v in field.enum_type.values]))
    return draw(st.integers(0, 5))


def _fill(message, names, draw) -> None:
    for name in names:
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None:
            target = getattr(message, name).add() if field.is_repeated else getattr(message, name)
            target.SetInParent()
        elif field.is_repeated:
            getattr(message, name).extend(_value(field, draw) for _ in range(draw(st.integers(1, 3))))
        else:
            setattr(message, name, _value(field, draw))


@st.composite
def old_nets(draw):
    net = caffe_pb2.NetParameter(name="fuzz")
    if draw(st.booleans()):
        net.input.extend(draw(st.lists(_NAMES, max_size=2)))
        net.input_dim.extend(draw(st.lists(st.integers(1, 4), max_size=9)))
    v0 = draw(st.booleans())
    for _ in range(draw(st.integers(1, 5))):
        layer = net.layers.add()
        layer.bottom.extend(draw(st.lists(_NAMES, max_size=2)))
        layer.top.extend(draw(st.lists(_NAMES, max_size=2)))
        if v0:
            inner = layer.layer
            inner.name, inner.type = draw(_NAMES), draw(st.sampled_from(_V0_TYPES))
            fields = [f.name for f in inner.DESCRIPTOR.fields if f.name not in ("name", "type", "blobs")]
            _fill(inner, draw(st.lists(st.sampled_from(fields), max_size=4, unique=True)), draw)
        else:
            layer.name, layer.type = draw(_NAMES), draw(st.sampled_from(_V1_TYPES))
            fields = [f.name for f in layer.DESCRIPTOR.fields if f.name not in ("name", "type", "blobs", "layer")]
            _fill(layer, draw(st.lists(st.sampled_from(fields), max_size=5, unique=True)), draw)
            for field in ("data_param", "image_data_param", "window_data_param"):
                if layer.HasField(field) and draw(st.booleans()):
                    _fill(getattr(layer, field), ["scale", "mean_file", "crop_size", "mirror"], draw)
    return net


def _check_upgrade(net: caffe_pb2.NetParameter) -> None:
    with time_limit(10):
        try:
            upgraded = upgrade_net(net, "fuzz.prototxt")
        except PrototxtError as exc:
            assert "fuzz.prototxt" in str(exc)
            return
    assert not upgraded.layers and not upgraded.input
    assert not upgraded.input_dim or not net.input  # (Caffe leaves input_dim alone when there is no input)
    v1_layers = [layer for layer in net.layers if not (layer.HasField("layer") and layer.layer.type == "padding")]
    has_input = bool(upgraded.layer) and upgraded.layer[0].type == "Input"
    assert len(upgraded.layer) - has_input == len(v1_layers)
    for old, new in zip(v1_layers, [layer for layer in upgraded.layer if layer.type != "Input"]):
        source = old.layer if old.HasField("layer") else old
        lists = (source.blobs_lr, source.weight_decay) + (
            () if old.HasField("layer") else (old.param, old.blob_share_mode)
        )
        assert len(new.param) == max(map(len, lists), default=0)
        kind = DATA_TRANSFORM_LAYERS.get(old.type)  # Caffe moves these for the three data layer types only
        if kind and not old.HasField("layer"):
            assert not any(getattr(new, kind).HasField(f) for f in ("scale", "mean_file", "crop_size", "mirror"))
    assert parse(text_format.MessageToString(upgraded)) == upgraded
    assert upgrade_net(upgraded) == upgraded  # nothing left to upgrade


@settings(FUZZ, max_examples=400)  # each example is a whole net: fewer suffice
@given(old_nets())
def test_fuzz_structured_old_nets(net):
    _check_upgrade(net)


@pytest.mark.slow
@FUZZ_SLOW
@given(old_nets())
def test_fuzz_structured_old_nets_long(net):
    _check_upgrade(net)
