"""Composing nets inside templates: `{{ embed_net("lenet.prototxt", prefix="t_", batch=64) }}`.

A teacher-student prototxt needs the teacher's layers under other names (so two nets with a `conv1` can
live in one file), without its data and loss layers, and frozen (lr_mult 0). `embed_net` renders another
template, rewrites it that way and returns its layers as prototxt text.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path

from google.protobuf import text_format

from pipeline.errors import TemplateError
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt_parse import parse_text
from pipeline.text.template import PROJECT_PROTOTXT_DIR, register_global, render_file
from pipeline.text.upgrade import upgrade_net

# What a layer type is (a data layer, a loss, how many blobs) is a fact of its class (pipeline/net/layers/), which
# this part of the package may not import: pipeline.net.layers hands its look-up over when it is imported.
_layer_class: Callable[[str], object | None] | None = None


def register_layer_classes(lookup: Callable[[str], object | None]) -> None:
    """`lookup(type)`: the registered Layer class of a Caffe type, or None for a type nobody registered."""
    global _layer_class
    _layer_class = lookup


def layer_class_of(kind: str):
    """The Layer class of `kind`, or None where the type is not registered (V1 names, other forks' types)."""
    if _layer_class is None:
        # The layer types are a plug-in set the net package registers on import; any entry point (a tool that
        # only draws or converts) may render a template first, so the first need loads them by name.
        importlib.import_module("pipeline.net.layers")
    if _layer_class is None:
        raise TemplateError("embed_net needs the layer types, and pipeline.net.layers registered none")
    return _layer_class(kind)


def blob_count(layer: caffe_pb2.LayerParameter) -> int:
    """How many blobs a layer of this type holds (for freezing each with a ParamSpec); 0 for unknown types."""
    cls = layer_class_of(layer.type)
    return cls.blob_count_for(layer) if cls is not None else 0


def _is_source(kind: str) -> bool:
    cls = layer_class_of(kind)
    return cls is not None and cls.is_source


def _with_losses(kind: str) -> bool:
    """A loss, or a layer that only makes sense beside one (Accuracy, Silence); unknown types by their name."""
    cls = layer_class_of(kind)
    if cls is None:
        return kind.endswith("Loss")
    return cls.is_loss or cls.drop_with_losses


def embed_layers(
    net: caffe_pb2.NetParameter,
    prefix: str,
    shared=("data", "label"),
    drop_sources: bool = True,
    drop_losses: bool = True,
    freeze: bool = True,
    keep_phase_rules: bool = False,
    share_params: str = "",
    inputs: dict[str, str] | None = None,
) -> list[caffe_pb2.LayerParameter]:
    """The layers of `net` renamed with `prefix` (blobs in `shared` keep their names), optionally frozen.

    `share_params` (with `freeze`) names each frozen blob `<share_params><layer>_<index>` after the original
    layer name, so several embeddings of one net given the same value share one set of weights (Caffe's
    ParamSpec.name): the first embedding owns them, a caffemodel loaded into it fills them all. `inputs` maps
    blobs of the embedded net to blobs of the including one (e.g. its "data" to one crop of the data)."""
    inputs = inputs or {}

    def rename(blob: str) -> str:
        if blob in inputs:
            return inputs[blob]
        return blob if blob in shared else prefix + blob

    layers = []
    for original in net.layer:
        if drop_sources and _is_source(original.type):
            continue
        if drop_losses and _with_losses(original.type):
            continue
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(original)
        layer.name = prefix + layer.name
        layer.bottom[:] = [rename(b) for b in layer.bottom]
        layer.top[:] = [rename(t) for t in layer.top]
        for spec in layer.param:
            if spec.name:
                spec.name = prefix + spec.name
        if freeze:
            del layer.param[:]
            for index in range(blob_count(layer)):
                spec = layer.param.add(lr_mult=0, decay_mult=0)
                if share_params:
                    spec.name = f"{share_params}{original.name}_{index}"
        if not keep_phase_rules:
            del layer.include[:]
            del layer.exclude[:]
        layers.append(layer)
    return layers


def embed_net(
    template: str,
    *,
    search_from: str = "<string>",
    prefix: str = "t_",
    shared=("data", "label"),
    freeze: bool = True,
    drop_sources: bool = True,
    drop_losses: bool = True,
    keep_phase_rules: bool | None = None,
    share_params: str = "",
    inputs: dict[str, str] | None = None,
    **variables,
) -> str:
    """Render and parse `template` (found beside the including file or in prototxt/), return its layers."""
    here = Path(search_from).resolve().parent if search_from != "<string>" else Path.cwd()
    path = next((d / template for d in (here, PROJECT_PROTOTXT_DIR) if (d / template).exists()), None)
    if path is None:
        raise TemplateError(f"embed_net: template '{template}' not found beside {search_from} or in prototxt/")
    net = upgrade_net(parse_text(render_file(path, variables), caffe_pb2.NetParameter(), str(path)), str(path))
    keep = not drop_sources if keep_phase_rules is None else keep_phase_rules
    layers = embed_layers(net, prefix, tuple(shared), drop_sources, drop_losses, freeze, keep, share_params, inputs)
    return "".join("layer {\n" + _indent(text_format.MessageToString(layer)) + "}\n" for layer in layers)


def _indent(text: str) -> str:
    return "".join("  " + line + "\n" for line in text.splitlines())


register_global("embed_net", lambda path: functools.partial(embed_net, search_from=path))
