"""From whatever prototxt the user has to a TEST-phase net holding the trained weights, ready to export.

* `deploy_param`: a train/test prototxt made into a deploy net, as people write them by hand for Caffe: data layers
  become Input layers (the data top only), and the layers that need labels (losses, Accuracy) or only feed them
  are dropped. A deploy prototxt comes out unchanged (apart from TEST-phase filtering).
* `preprocessing`: what the data layers do to an image before the net sees it (mean, scale, crop, channels).
* `build_net_for_weights`: builds the net without drawing its fillers (VGG-16's fillers take seconds and twice
  the weights' memory), copies the weights in, then fills only the blobs the file did not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pipeline.net.layers  # noqa: F401  (registers every layer type)
from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.net.layers.registry import layer_class
from pipeline.proto import caffe_pb2
from pipeline.text.netspec import filter_net, net_state
from pipeline.weights.io import CopyReport, copy_weights

TEST = caffe_pb2.TEST


def _is_source(layer: caffe_pb2.LayerParameter) -> bool:
    if layer.bottom:
        return False
    try:
        return layer_class(layer.type, layer.name).is_source
    except NetBuildError:
        return False


def _dropped(layer: caffe_pb2.LayerParameter) -> bool:
    """Layers that need labels (losses, Accuracy) or produce nothing an inference user wants (its class says)."""
    try:
        cls = layer_class(layer.type, layer.name)
    except NetBuildError:
        return False
    return cls.is_loss or cls.drop_with_losses or not cls.in_deploy


def _data_shape(layer: caffe_pb2.LayerParameter, index: int) -> tuple[int, ...] | None:
    """The shape of a data layer's `index`-th top where the prototxt alone tells it."""
    if layer.type == "DummyData":
        p = layer.dummy_data_param
        if p.shape:
            return tuple(p.shape[min(index, len(p.shape) - 1)].dim)
        if p.num:
            i = min(index, len(p.num) - 1)
            return (p.num[i], p.channels[i], p.height[i], p.width[i])
    if layer.type == "MemoryData" and index == 0:
        p = layer.memory_data_param
        return (p.batch_size, p.channels, p.height, p.width)
    return None


def deploy_param(
    param: caffe_pb2.NetParameter, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> caffe_pb2.NetParameter:
    """The TEST-phase net with data layers turned into Input layers and label-only layers dropped.

    `input_shapes` gives (or overrides) the shape of an input blob; a data layer that reads a database needs one
    for its data top. Label tops are left out unless `input_shapes` names them.
    """
    input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    net = filter_net(param, net_state(param, TEST))
    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    del result.layer[:]
    kept: list[caffe_pb2.LayerParameter] = []
    available: set[str] = set()
    for layer in net.layer:
        if _is_source(layer) and layer.type != "Parameter":
            shapes = [tuple(s.dim) for s in layer.input_param.shape] if layer.type == "Input" else []
            new = caffe_pb2.LayerParameter(name=layer.name, type="Input")
            for i, top in enumerate(layer.top):
                if layer.type == "Input" and shapes:
                    shape = shapes[i] if len(shapes) > 1 else shapes[0]
                else:
                    shape = _data_shape(layer, i) if (i == 0 or top in input_shapes) else None
                shape = input_shapes.get(top, shape)
                if shape is None:
                    if i == 0:
                        raise NetBuildError(
                            f"reads its data from outside the prototxt, so the shape of its top '{top}' is unknown: "
                            f"give it (e.g. --input-shape {top}=1,3,224,224)",
                            layer.name,
                            layer.type,
                        )
                    continue  # a label top: not an input of the deploy net
                new.top.append(top)
                new.input_param.shape.add().dim.extend(int(d) for d in shape)
                available.add(top)
            if new.top:
                kept.append(new)
            continue
        if _dropped(layer) or not all(b in available for b in layer.bottom):
            continue
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(layer)
        del copy.loss_weight[:]
        kept.append(copy)
        available.update(layer.top)
    consumed = {b for layer in kept for b in layer.bottom}
    for layer in kept:
        if layer.type == "Input" and layer.name in {x.name for x in net.layer if _is_source(x)}:
            tops = [(t, s) for t, s in zip(layer.top, layer.input_param.shape) if t in consumed]
            del layer.top[:]
            layer.input_param.ClearField("shape")
            for top, shape in tops:
                layer.top.append(top)
                layer.input_param.shape.add().CopyFrom(shape)
        if layer.top or layer.type != "Input":
            result.layer.add().CopyFrom(layer)
    if not any(layer.type != "Input" for layer in result.layer):
        raise NetBuildError(f"net '{param.name}' has no layer left for deployment once labels and losses are gone")
    return result


@dataclass
class Preprocessing:
    """What a data layer's transform_param asks for; `source` names the layer it came from (None: unknown)."""

    source: str | None = None
    phase: str = "TEST"
    channels: int | None = None
    scale: float = 1.0
    mean_file: str = ""
    mean_values: list[float] = field(default_factory=list)
    crop_size: int = 0
    mirror: bool = False
    force_color: bool = False
    force_gray: bool = False

    def describe(self) -> list[str]:
        if self.source is None:
            return ["unknown (a deploy prototxt does not say: pass the train/test prototxt with --data-prototxt)"]
        lines = [f"from data layer '{self.source}' ({self.phase} phase)"]
        if self.mean_file:
            lines.append(f"subtract the mean image {self.mean_file}")
        elif self.mean_values:
            lines.append(f"subtract per-channel mean values {self.mean_values}")
        else:
            lines.append("no mean subtraction")
        lines.append(f"then multiply by scale {self.scale:g}" if self.scale != 1 else "no scaling (raw 0..255 pixels)")
        lines.append(f"centre crop {self.crop_size}x{self.crop_size}" if self.crop_size else "no crop")
        if self.mirror:
            lines.append("random mirroring in training (none at test time)")
        if self.channels == 1 or self.force_gray:
            lines.append("channels: one (grey)")
        elif self.channels == 3 or self.force_color:
            lines.append(
                "channels: BGR, Caffe's order for images decoded by OpenCV (convert_imageset, ImageData); "
                "CIFAR-10 databases from convert_cifar_data keep the files' R,G,B"
            )
        return lines


def preprocessing(param: caffe_pb2.NetParameter | None, channels: int | None = None) -> Preprocessing:
    """The transform of the first data layer of the TEST phase (TRAIN if none), from a train/test prototxt."""
    if param is None:
        return Preprocessing(channels=channels)
    layers = {phase: _data_layer(param, phase) for phase in (TEST, caffe_pb2.TRAIN)}
    layer = layers[TEST] or layers[caffe_pb2.TRAIN]
    if layer is None:
        return Preprocessing(channels=channels)
    t, legacy = _transform(layer)
    color = layer.image_data_param.is_color if layer.type == "ImageData" else None
    train = layers[caffe_pb2.TRAIN]
    return Preprocessing(
        source=layer.name,
        phase="TEST" if layer is layers[TEST] else "TRAIN",
        channels=channels if color is None else (3 if color else 1),
        scale=float(t.scale if t.HasField("scale") else (legacy.scale if legacy.HasField("scale") else 1.0)),
        mean_file=t.mean_file or legacy.mean_file,
        mean_values=[float(v) for v in t.mean_value],
        crop_size=int(t.crop_size or legacy.crop_size),
        mirror=train is not None and any(_transform(train)[i].mirror for i in (0, 1)),
        force_color=t.force_color,
        force_gray=t.force_gray,
    )


def _data_layer(param: caffe_pb2.NetParameter, phase: int) -> caffe_pb2.LayerParameter | None:
    for layer in filter_net(param, net_state(param, phase)).layer:
        if _is_source(layer) and layer.type not in ("Input", "Parameter", "DummyData"):
            return layer
    return None


def _transform(layer: caffe_pb2.LayerParameter):
    """(transform_param, the deprecated copies of its fields in the data layer's own parameter)."""
    return layer.transform_param, (layer.data_param if layer.type == "Data" else layer.image_data_param)


def build_net_for_weights(
    param: caffe_pb2.NetParameter, weights: list[str | Path], source: str = "<net>", seed: int = 0
) -> tuple[Net, list[CopyReport]]:
    """A TEST-phase net of `param` with `weights` files copied in (caffemodel, HDF5, safetensors, torch state
    dict, .npz: told apart by content, see pipeline/weights/format.py).

    Fillers run only for the blobs of layers that no file gave weights to (Caffe would have filled those).
    """
    net = Net(param, phase=TEST, seed=seed, source=source, fill_blobs=False)
    reports = []
    try:
        for path in weights:
            reports.append(copy_weights(net, path))
    finally:
        copied = {name for report in reports for name in report.copied}
        owners = {t.data_ptr() for layer in net.layers if layer.name in copied for t in layer.blobs}
        for layer in net.layers:
            layer.reset_parameters(keep=owners)
    for report in reports:
        report.missing = [layer.name for layer in net.layers if layer.blobs and layer.name not in copied]
    return net, reports
