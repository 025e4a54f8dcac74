"""Upgrading deprecated nets to the current (V2 `layer`) format, as Caffe's upgrade_proto.cpp does on read.

`upgrade_net` runs Caffe's UpgradeNetAsNeeded steps in its order: V0 -> V1, old data-transformation fields,
V1 -> V2 (all three in pipeline/text/upgrade_v1.py), net `input` fields -> an Input layer, BatchNorm layers that
still declare their three ParamSpecs. Caffe's tools upgrade_net_proto_text /
upgrade_net_proto_binary are in pipeline/weights/upgrade_tools.py.
"""

from __future__ import annotations

import logging
import re

from google.protobuf import text_format

from pipeline.errors import PrototxtError
from pipeline.proto import caffe_pb2

log = logging.getLogger("pipeline")


def upgrade_net(net: caffe_pb2.NetParameter, path: str = "<net>") -> caffe_pb2.NetParameter:
    """The net in the current format (the same object when nothing needed upgrading); PrototxtError naming
    the file and layer when it cannot be upgraded completely."""
    try:
        if net.layers:
            from pipeline.text.upgrade_v1 import upgrade_v1_net

            net = upgrade_v1_net(net, path)
        if net.input:
            net = upgrade_input_fields(net, path)
        if net_needs_batchnorm_upgrade(net):
            upgrade_batchnorm(net)
        _recover_master_swish(net)
    except (ValueError, TypeError, UnicodeError) as exc:  # e.g. names that are not UTF-8 in a binary file
        raise PrototxtError(f"cannot upgrade this net: {exc}", path) from None
    return net


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Caffe's NetNeedsUpgrade: V0 or V1 layers, net `input` fields, or old-style BatchNorm ParamSpecs."""
    return bool(net.layers) or bool(net.input) or net_needs_batchnorm_upgrade(net)


def _recover_master_swish(net: caffe_pb2.NetParameter) -> None:
    """BVLC master wrote swish_param as field 147, which our schema gives to the KD fork's parameter.

    Both messages hold one float at field 1, so a master-era binary Swish layer reads as a KD parameter:
    move it back.
    """
    for layer in net.layer:
        if layer.type == "Swish" and layer.HasField("knowledge_distillation_param"):
            if not layer.HasField("swish_param"):
                layer.swish_param.beta = layer.knowledge_distillation_param.temperature
            layer.ClearField("knowledge_distillation_param")


def upgrade_input_fields(net: caffe_pb2.NetParameter, path: str) -> caffe_pb2.NetParameter:
    """`input:` + `input_shape`/`input_dim` become a leading Input layer (Caffe's UpgradeNetInput).

    Without any shape the inputs are just dropped: that is a legacy caffemodel, whose `input` named the blob
    of the deploy net it came from. `input_shape` wins over `input_dim` when both are given.
    """
    names = list(net.input)
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    upgraded.ClearField("input")
    upgraded.ClearField("input_shape")
    upgraded.ClearField("input_dim")
    if net.input_shape:
        if len(net.input_shape) < len(names):
            raise PrototxtError(
                f"{len(net.input_shape)} input_shape entries for {len(names)} inputs "
                f"({', '.join(names)}): need one per input",
                path,
            )
        shapes = [list(s.dim) for s in net.input_shape[: len(names)]]
    elif net.input_dim:
        dims = list(net.input_dim)
        if len(dims) < 4 * len(names):
            raise PrototxtError(
                f"{len(dims)} input_dim values for {len(names)} inputs ({', '.join(names)}): "
                "need 4 (num, channels, height, width) per input",
                path,
            )
        shapes = [dims[4 * i : 4 * i + 4] for i in range(len(names))]
    else:
        return upgraded
    del upgraded.layer[:]
    layer = upgraded.layer.add(name="input", type="Input")
    layer.top.extend(names)
    for shape in shapes:
        layer.input_param.shape.add().dim.extend(shape)
    upgraded.layer.extend(net.layer)
    return upgraded


def net_needs_batchnorm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def upgrade_batchnorm(net: caffe_pb2.NetParameter) -> None:
    """Caffe's UpgradeNetBatchNorm: BatchNorm's statistics are not learned, whatever its three ParamSpecs say
    (names and share modes are kept)."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ----- the upgrade tools -----------------------------------------------------------------------------------
_WHOLE_FLOAT = re.compile(r"^(\s*\w+: -?\d+)\.0$", re.MULTILINE)


def net_to_text(net: caffe_pb2.NetParameter) -> str:
    """Text format as Caffe's WriteProtoToTextFile prints it (whole floats without ".0": `lr_mult: 1`)."""
    return _WHOLE_FLOAT.sub(r"\1", text_format.MessageToString(net))
