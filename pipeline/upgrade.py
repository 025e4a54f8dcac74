"""Upgrading deprecated nets to the current (V2 `layer`) format, as Caffe's upgrade_proto.cpp does on read."""

from __future__ import annotations

from pipeline.errors import PrototxtError
from pipeline.proto import caffe_pb2


def upgrade_net(net: caffe_pb2.NetParameter, path: str = "<net>") -> caffe_pb2.NetParameter:
    if net.layers:
        from pipeline.upgrade_v1 import upgrade_v1_net

        net = upgrade_v1_net(net, path)
    if net.input:
        net = upgrade_input_fields(net, path)
    _recover_master_swish(net)
    return net


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
    """`input:` + `input_shape`/`input_dim` become a leading Input layer (Caffe's UpgradeNetInput)."""
    names = list(net.input)
    shapes = [list(s.dim) for s in net.input_shape]
    dims = list(net.input_dim)
    if not shapes and dims:
        if len(dims) != 4 * len(names):
            raise PrototxtError(f"{len(dims)} input_dim values for {len(names)} inputs: need 4 per input", path)
        shapes = [dims[4 * i : 4 * i + 4] for i in range(len(names))]
    if len(shapes) not in (0, len(names)):
        raise PrototxtError(f"{len(shapes)} input_shape entries for {len(names)} inputs", path)
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    del upgraded.layer[:]
    upgraded.ClearField("input")
    upgraded.ClearField("input_shape")
    upgraded.ClearField("input_dim")
    layer = upgraded.layer.add(name="input", type="Input")
    layer.top.extend(names)
    for shape in shapes:
        layer.input_param.shape.add().dim.extend(shape)
    upgraded.layer.extend(net.layer)
    return upgraded
