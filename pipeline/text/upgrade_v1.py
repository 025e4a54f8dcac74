"""V0 (`layers { layer { ... } }`) and V1 (`layers` with enum types) nets to V2 `layer`s.

Follows Caffe's upgrade_proto.cpp step by step: V0 padding layers are folded into the convolution or pooling
they feed, V0's flat fields are moved into the per-type messages (V0 -> V1), the data-transformation fields
of old data layers move into `transform_param`, and each V1 layer becomes a LayerParameter with its type
spelled as a string and `blobs_lr`/`weight_decay`/`param`/`blob_share_mode` turned into ParamSpecs (V1 -> V2).
Blobs travel with their layers, so caffemodels upgrade the same way. Where Caffe logs an error and carries
on with a partly upgraded net, this raises a PrototxtError naming the file and the layer.
"""

from __future__ import annotations

from pipeline.errors import PrototxtError
from pipeline.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

V1_TYPE_NAMES = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DATA: "Data",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# V0 type strings -> V1 enum (Caffe's UpgradeV0LayerType).
V0_TYPES = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# V0 flat field -> {V0 type: (V1 message field, field inside it)}; a field used with any other type is an error.
_CONV_IP = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_DATA_SOURCES = {
    "data": "data_param",
    "hdf5_data": "hdf5_data_param",
    "images": "image_data_param",
    "window_data": "window_data_param",
}
V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {t: (m, "num_output") for t, m in _CONV_IP.items()},
    "biasterm": {t: (m, "bias_term") for t, m in _CONV_IP.items()},
    "weight_filler": {t: (m, "weight_filler") for t, m in _CONV_IP.items()},
    "bias_filler": {t: (m, "bias_filler") for t, m in _CONV_IP.items()},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {
        **{t: (m, "source") for t, m in _DATA_SOURCES.items()},
        "infogain_loss": ("infogain_loss_param", "source"),
    },
    "batchsize": {t: (m, "batch_size") for t, m in _DATA_SOURCES.items()},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},
}
# V0 fields that go to transform_param whatever the layer type.
V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}

# Old data layers whose own message still held the transformation fields (Caffe's UpgradeNetDataTransformation).
DATA_TRANSFORM_LAYERS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}
TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# Every *_param message a V1 layer can carry, copied unchanged to the V2 layer.
V1_PARAM_FIELDS = tuple(f.name for f in V1.DESCRIPTOR.fields if f.name.endswith("_param"))


def _where(layer_name: str, index: int) -> str:
    return f"layer '{layer_name}'" if layer_name else f"layer #{index}"


def upgrade_v1_net(net: caffe_pb2.NetParameter, path: str = "<net>") -> caffe_pb2.NetParameter:
    """The V2 equivalent of a net written with `layers` (V1, or V0 nested inside), as Caffe's
    UpgradeNetAsNeeded does before building a net or loading weights."""
    try:
        if any(layer.HasField("layer") for layer in net.layers):
            net = upgrade_v0_net(net, path)
        net = upgrade_data_transformation(net)
        return upgrade_v1_layers(net, path)
    except (ValueError, TypeError, UnicodeError) as exc:  # e.g. a name that is not valid UTF-8
        raise PrototxtError(f"cannot upgrade the deprecated layers: {exc}", path) from None


def net_needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    for layer in net.layers:
        field = DATA_TRANSFORM_LAYERS.get(layer.type)
        if field and layer.HasField(field):
            message = getattr(layer, field)
            if any(message.HasField(name) for name in TRANSFORM_FIELDS):
                return True
    return False


def upgrade_data_transformation(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Move scale/mean_file/crop_size/mirror of old Data/ImageData/WindowData layers into transform_param."""
    if not net_needs_data_upgrade(net):
        return net
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    for layer in upgraded.layers:
        field = DATA_TRANSFORM_LAYERS.get(layer.type)
        if not field or not layer.HasField(field):
            continue
        message = getattr(layer, field)
        for name in TRANSFORM_FIELDS:
            if message.HasField(name):
                setattr(layer.transform_param, name, getattr(message, name))
                message.ClearField(name)
    return upgraded


# ----- V1 -> V2 --------------------------------------------------------------------------------------------
def upgrade_v1_layers(net: caffe_pb2.NetParameter, path: str) -> caffe_pb2.NetParameter:
    if net.layer:
        raise PrototxtError(
            f"has both V2 'layer' ({len(net.layer)}) and deprecated V1 'layers' ({len(net.layers)}) entries; "
            "Caffe would drop the 'layer' ones: upgrade the 'layers' and merge them by hand",
            path,
        )
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    upgraded.ClearField("layers")
    for index, old in enumerate(net.layers):
        upgrade_v1_layer(old, upgraded.layer.add(), path, index)
    return upgraded


def upgrade_v1_layer(old: caffe_pb2.V1LayerParameter, new: caffe_pb2.LayerParameter, path: str, index: int) -> None:
    """Caffe's UpgradeV1LayerParameter."""
    if old.HasField("layer"):
        raise PrototxtError(f"{_where(old.name, index)}: still holds a V0 'layer' inside a V1 layer", path)
    new.bottom.extend(old.bottom)
    new.top.extend(old.top)
    if old.HasField("name"):
        new.name = old.name
    for rule in old.include:
        new.include.add().CopyFrom(rule)
    for rule in old.exclude:
        new.exclude.add().CopyFrom(rule)
    if old.HasField("type"):
        if old.type not in V1_TYPE_NAMES:
            raise PrototxtError(f"{_where(old.name, index)}: unknown V1 layer type {old.type}", path)
        new.type = V1_TYPE_NAMES[old.type]
    for blob in old.blobs:
        new.blobs.add().CopyFrom(blob)

    def spec(i: int) -> caffe_pb2.ParamSpec:
        while len(new.param) <= i:
            new.param.add()
        return new.param[i]

    for i, name in enumerate(old.param):
        spec(i).name = name
    for i, mode in enumerate(old.blob_share_mode):
        # V1's DimCheckMode and ParamSpec's share the numbering (STRICT 0, PERMISSIVE 1).
        spec(i).share_mode = mode
    for i, lr in enumerate(old.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(old.weight_decay):
        spec(i).decay_mult = decay
    new.loss_weight.extend(old.loss_weight)
    for field in V1_PARAM_FIELDS:
        if old.HasField(field):
            getattr(new, field).CopyFrom(getattr(old, field))


# ----- V0 -> V1 --------------------------------------------------------------------------------------------
def upgrade_v0_net(net: caffe_pb2.NetParameter, path: str) -> caffe_pb2.NetParameter:
    """Caffe's UpgradeV0Net: fold padding layers, then each V0 layer to a V1 layer. Like Caffe, only the
    net's name, inputs, input_dim and force_backward survive next to the layers."""
    for index, connection in enumerate(net.layers):
        if not connection.HasField("layer"):
            raise PrototxtError(
                f"{_where(connection.name, index)}: V1 layer in a net of V0 layers (`layers {{ layer {{ ... }} }}`); "
                "Caffe would drop everything but its bottoms and tops",
                path,
            )
    padded = _fold_padding_layers(net, path)
    upgraded = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        upgraded.name = padded.name
    for index, connection in enumerate(padded.layers):
        _upgrade_v0_layer(connection, upgraded.layers.add(), path, index)
    upgraded.input.extend(padded.input)
    upgraded.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        upgraded.force_backward = padded.force_backward
    return upgraded


def _fold_padding_layers(net: caffe_pb2.NetParameter, path: str) -> caffe_pb2.NetParameter:
    """Caffe's UpgradeV0PaddingLayers: a 'padding' layer disappears and its pad moves to the conv/pool it feeds."""
    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    result.ClearField("layers")
    last_producer = {name: -1 for name in net.input}
    for i, connection in enumerate(net.layers):
        layer = connection.layer
        where = _where(layer.name, i)
        if layer.type != "padding":
            result.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_producer:
                raise PrototxtError(f"{where}: unknown bottom blob '{blob}' (bottom index {j})", path)
            producer = last_producer[blob]
            if producer == -1:
                continue
            source = net.layers[producer]
            if source.layer.type != "padding":
                continue
            if layer.type not in ("conv", "pool"):
                raise PrototxtError(
                    f"{where}: a padding layer feeds a layer of type '{layer.type}'; "
                    "only conv and pool layers can absorb padding",
                    path,
                )
            if len(connection.bottom) != 1:
                raise PrototxtError(f"{where}: fed by a padding layer, it must take exactly one bottom", path)
            if len(source.bottom) != 1 or len(source.top) != 1:
                raise PrototxtError(
                    f"{_where(source.layer.name, producer)}: a padding layer takes one bottom and gives one top", path
                )
            folded = result.layers[len(result.layers) - 1]
            folded.layer.pad = source.layer.pad
            folded.bottom[j] = source.bottom[0]
        for blob in connection.top:
            last_producer[blob] = i
    return result


def _upgrade_v0_layer(
    connection: caffe_pb2.V1LayerParameter, out: caffe_pb2.V1LayerParameter, path: str, index: int
) -> None:
    """Caffe's UpgradeV0LayerParameter."""
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    v0 = connection.layer
    where = _where(v0.name, index)
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise PrototxtError(f"{where}: unknown V0 layer type '{kind}'", path)
        out.type = V0_TYPES[kind]
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        if kind not in targets:
            raise PrototxtError(f"{where}: V0 parameter '{field}' does not apply to a layer of type '{kind}'", path)
        message_name, inner = targets[kind]
        _set(getattr(out, message_name), inner, getattr(v0, field))
    for field, inner in V0_TRANSFORM_FIELDS.items():
        if v0.HasField(field):
            setattr(out.transform_param, inner, getattr(v0, field))


def _set(message, name: str, value) -> None:
    """message.name = value, for whole messages (name ""), sub-messages, repeated and scalar fields alike."""
    if not name:
        message.CopyFrom(value)
        return
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.message_type is not None:
        getattr(message, name).CopyFrom(value)
    elif field.is_repeated:  # convolution pad/kernel_size/stride are per-axis lists since N-d convolution
        getattr(message, name).append(value)
    else:
        setattr(message, name, value)
