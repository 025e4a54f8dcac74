"""NetParameter -> NetParameter edits behind layer-at-a-time training and fine-tuning.

Freezing is done the Caffe way, in the prototxt: a frozen layer gets `lr_mult: 0` (and `decay_mult: 0`) on each of
its blobs, so the Net builder gives its parameters no gradient and the solver leaves them bit for bit as they were.
Every edit returns a new message; errors name the net, the layer or blob, and what exists instead.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from pipeline.errors import NetBuildError, PipelineError
from pipeline.net.layers.registry import layer_class
from pipeline.proto import caffe_pb2
from pipeline.text.compose import blob_count


class TransferError(PipelineError):
    """A schedule, head replacement or feature request that does not fit the net."""


@dataclass
class LayerInfo:
    type: str
    blobs: int
    lr_mults: list[float]
    tops: list[str]

    @property
    def trainable(self) -> bool:
        return any(m != 0 for m in self.lr_mults)


@dataclass
class NetInfo:
    """What a built net says about its layers and blobs (Split layers left out), for checking edits up front."""

    name: str
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    blob_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def with_params(self) -> list[str]:
        return [n for n, info in self.layers.items() if info.blobs]


def probe(net_param: caffe_pb2.NetParameter, phase: int = caffe_pb2.TRAIN) -> NetInfo:
    """Build the net once (data sources opened and closed again) and record its layers, blob counts and shapes."""
    from pipeline.net import Net

    state = net_param.state
    net = Net(net_param, phase=phase, level=state.level, stages=list(state.stage), seed=0, source=net_param.name)
    try:
        info = NetInfo(net.name)
        for layer in net.layers:
            if layer.type_name == "Split" or layer.param.type == "Split":
                continue
            specs = list(layer.param.param)
            # Buffers (BatchNorm's statistics) are blobs that never learn, whatever their ParamSpec says.
            mults = [
                (specs[i].lr_mult if i < len(specs) else 1.0) if isinstance(blob, nn.Parameter) else 0.0
                for i, blob in enumerate(layer.blobs)
            ]
            info.layers[layer.name] = LayerInfo(layer.param.type, len(layer.blobs), mults, list(layer.top_names))
        info.blob_shapes = {k: v for k, v in net.blob_shapes.items() if "_split_" not in k}
        return info
    finally:
        close_sources(net)


def close_sources(net) -> None:
    for layer in net.layers:
        close = getattr(layer, "close", None)
        if callable(close):
            close()


def _copy(net_param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    return out


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _listing(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


# ----- choosing layers -------------------------------------------------------------------------------------------
def resolve_layers(patterns: Iterable[str], info: NetInfo, what: str) -> list[str]:
    """Layer names (in net order) named by `patterns`; exact names must exist and be trainable, globs must match.

    A glob (`conv1_*`) picks the trainable layers it matches and skips the others (ReLU, frozen teacher layers).
    """
    chosen: set[str] = set()
    trainable = [n for n, i in info.layers.items() if i.trainable]
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            hits = [n for n in trainable if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise TransferError(
                    f"{what}: pattern '{pattern}' matches no layer with trainable parameters in net "
                    f"'{info.name}' (trainable layers: {_listing(trainable)})"
                )
            chosen.update(hits)
            continue
        layer = info.layers.get(pattern)
        if layer is None:
            raise TransferError(
                f"{what}: net '{info.name}' has no layer named '{pattern}'{suggest(pattern, info.layers)} "
                f"(layers with parameters: {_listing(info.with_params())})"
            )
        if not layer.blobs:
            raise TransferError(
                f"{what}: layer '{pattern}' ({layer.type}) has no parameters to train "
                f"(layers with parameters: {_listing(info.with_params())})"
            )
        if not layer.trainable:
            raise TransferError(
                f"{what}: layer '{pattern}' ({layer.type}) is frozen by the net itself (lr_mult 0 on every blob); "
                "a schedule chooses among the layers the net lets learn"
            )
        chosen.add(pattern)
    return [n for n in info.layers if n in chosen]


def require_blob(blob: str, info: NetInfo, what: str) -> tuple[int, ...]:
    if blob not in info.blob_shapes:
        raise TransferError(
            f"{what}: net '{info.name}' has no blob named '{blob}'{suggest(blob, info.blob_shapes)} "
            f"(blobs: {_listing(list(info.blob_shapes))})"
        )
    return info.blob_shapes[blob]


# ----- edits ---------------------------------------------------------------------------------------------------
def freeze(
    net_param: caffe_pb2.NetParameter,
    trainable: Iterable[str] | None,
    info: NetInfo | None = None,
    freeze_batchnorm_stats: bool = False,
) -> caffe_pb2.NetParameter:
    """Every layer not in `trainable` gets lr_mult 0 / decay_mult 0 on each blob (None: nothing changes).

    Trainable layers keep their ParamSpecs as written. Blob counts come from `info` (a probe of the net), else
    from the layer type. With `freeze_batchnorm_stats`, frozen BatchNorm layers use their stored statistics.
    """
    out = _copy(net_param)
    if trainable is None:
        return out
    keep = set(trainable)
    for layer in out.layer:
        if layer.name in keep:
            continue
        known = info.layers.get(layer.name) if info is not None else None
        count = known.blobs if known is not None else max(blob_count(layer), len(layer.param))
        if not count:
            continue
        specs = list(layer.param)
        del layer.param[:]
        for i in range(count):
            spec = layer.param.add()
            if i < len(specs):
                spec.CopyFrom(specs[i])
            spec.lr_mult, spec.decay_mult = 0.0, 0.0
        if freeze_batchnorm_stats and layer.type == "BatchNorm":
            layer.batch_norm_param.use_global_stats = True
    return out


def is_loss_layer(layer: caffe_pb2.LayerParameter) -> bool:
    try:
        return layer_class(layer.type, layer.name).is_loss
    except NetBuildError:
        return layer.type.endswith("Loss")


def silence_losses(net_param: caffe_pb2.NetParameter) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Every loss of the net gets loss_weight 0 (its value is still computed and shown); returns the layer names."""
    out = _copy(net_param)
    silenced = []
    for layer in out.layer:
        if is_loss_layer(layer) or any(w != 0 for w in layer.loss_weight):
            layer.loss_weight[:] = [0.0] * len(layer.top)
            silenced.append(layer.name)
    return out, silenced


def produced_blobs(net_param: caffe_pb2.NetParameter) -> set[str]:
    return {top for layer in net_param.layer for top in layer.top}


def add_aux_head(
    net_param: caffe_pb2.NetParameter,
    prefix: str,
    bottom: str,
    num_output: int,
    label: str | None = "label",
    teacher: str | None = None,
    distill_param: caffe_pb2.KnowledgeDistillationParameter | None = None,
    weight_filler: caffe_pb2.FillerParameter | None = None,
    loss_weight: float = 1.0,
) -> caffe_pb2.NetParameter:
    """Append a temporary head: `<prefix>_fc` (InnerProduct) on `bottom`, its loss and a TEST accuracy.

    The loss is SoftmaxWithLoss on `label`, or with a `teacher` blob a KnowledgeDistillation loss against it
    (with the label as third bottom when distill_param.alpha < 1). Appended after every other layer, the head
    reads each blob's final value (after in-place ReLUs).
    """
    out = _copy(net_param)
    fc = out.layer.add(name=f"{prefix}_fc", type="InnerProduct", bottom=[bottom], top=[f"{prefix}_fc"])
    fc.param.add(lr_mult=1, decay_mult=1)
    fc.param.add(lr_mult=2, decay_mult=0)
    fc.inner_product_param.num_output = num_output
    fc.inner_product_param.weight_filler.CopyFrom(weight_filler or caffe_pb2.FillerParameter(type="xavier"))
    fc.inner_product_param.bias_filler.type = "constant"
    loss = out.layer.add(name=f"{prefix}_loss", top=[f"{prefix}_loss"], loss_weight=[loss_weight])
    if teacher:
        kd = distill_param or caffe_pb2.KnowledgeDistillationParameter()
        loss.type = "KnowledgeDistillation"
        loss.bottom.extend([fc.top[0], teacher] + ([label] if label and kd.alpha < 1 else []))
        loss.knowledge_distillation_param.CopyFrom(kd)
    else:
        loss.type = "SoftmaxWithLoss"
        loss.bottom.extend([fc.top[0], label])
    if label:
        accuracy = out.layer.add(name=f"{prefix}_accuracy", type="Accuracy", top=[f"{prefix}_accuracy"])
        accuracy.bottom.extend([fc.top[0], label])
        accuracy.include.add(phase=caffe_pb2.TEST)
    return out


def replace_head(
    net_param: caffe_pb2.NetParameter,
    head: str,
    num_output: int,
    new_name: str | None = None,
    bottom: str | None = None,
) -> caffe_pb2.NetParameter:
    """Caffe's fine-tuning edit: the InnerProduct/Convolution `head` becomes a fresh layer with `num_output` outputs.

    The new layer is renamed (default `<head>_new`) so that copying weights by name leaves it to its filler; it
    writes the old head's top, so the loss and accuracy layers read it unchanged. `bottom` attaches it to another
    blob than the old head's (chopping off more of the net).
    """
    out = _copy(net_param)
    heads = [layer for layer in out.layer if layer.name == head]
    if not heads:
        candidates = [layer.name for layer in out.layer if layer.type in ("InnerProduct", "Convolution")]
        raise TransferError(
            f"net '{out.name}' has no layer named '{head}' to replace{suggest(head, candidates)} "
            f"(InnerProduct/Convolution layers: {_listing(candidates)})"
        )
    new_name = new_name or f"{head}_new"
    if any(layer.name == new_name for layer in out.layer):
        raise TransferError(f"net '{out.name}' already has a layer named '{new_name}' (the replacement head's name)")
    for layer in heads:
        if layer.type not in ("InnerProduct", "Convolution"):
            raise TransferError(
                f"layer '{head}' is a {layer.type}: only InnerProduct or Convolution heads are replaced"
            )
        index = list(out.layer).index(layer)
        earlier = {t for previous in out.layer[:index] for t in previous.top}
        source = bottom or (layer.bottom[0] if layer.bottom else "")
        if source not in earlier:
            where = "is not produced by any layer before it"
            raise TransferError(
                f"replacing head '{head}': its bottom blob '{source}' {where}{suggest(source, earlier)} "
                f"(blobs available there: {_listing(sorted(earlier))})"
            )
        layer.name = new_name
        layer.bottom[:] = [source]
        params = layer.inner_product_param if layer.type == "InnerProduct" else layer.convolution_param
        params.num_output = num_output
        if not params.HasField("weight_filler") or params.weight_filler.type == "constant":
            params.weight_filler.CopyFrom(caffe_pb2.FillerParameter(type="xavier"))
        del layer.blobs[:]
    return out
