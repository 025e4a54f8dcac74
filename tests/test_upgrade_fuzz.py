"""Fuzzing the prototxt parser and the upgrade: mutated V0/V1/V2 texts, and random V0/V1 nets built field by field;
only our PrototxtError naming the file may come out."""

import pytest
from fuzz_util import FUZZ, FUZZ_SLOW, TEXT_OPS, mutated, time_limit
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from upgrade_util import V0_DATA, V0_DEPLOY, V1_FEATURES, parse

from pipeline.errors import PrototxtError
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import parse_text
from pipeline.text.upgrade import upgrade_net
from pipeline.text.upgrade_v1 import DATA_TRANSFORM_LAYERS, V0_TYPES

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
