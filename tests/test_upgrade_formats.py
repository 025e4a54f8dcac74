"""The V0/V1 -> V2 upgrade rules (Caffe's upgrade_proto.cpp) on small nets: V1 fields and types, V0 layers, the input
fields, BatchNorm's params, and bad nets naming the file and layer."""

import pytest
import torch
from upgrade_util import (
    V0_DATA,
    V0_DATA_UPGRADED,
    V0_DEPLOY,
    V0_DEPLOY_UPGRADED,
    V1_FEATURES,
    V1_FEATURES_UPGRADED,
    assert_same_net,
    parse,
)

from pipeline.errors import PrototxtError
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import net_from_string, parse_text, read_net
from pipeline.text.upgrade import net_needs_upgrade, upgrade_net
from pipeline.text.upgrade_v1 import V1_PARAM_FIELDS, V1_TYPE_NAMES


# ----- V1 features -----------------------------------------------------------------------------------------
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


def test_parse_errors_in_v1_text_name_the_layer():
    with pytest.raises(PrototxtError, match="'conv9'"):
        parse_text('layers {\n name: "conv9"\n type: CONVOLUTON\n}\n', caffe_pb2.NetParameter(), "x.prototxt")
