"""Every Caffe layer type, one module per type (or per tight family), each registering itself on import."""

import importlib
import pkgutil

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import LAYERS, known_types, layer_class, register
from pipeline.text.compose import register_layer_classes

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

# embed_net (pipeline/text/compose.py) reads the type facts through this look-up.
register_layer_classes(lambda kind: LAYERS.get(kind) if kind in LAYERS else None)

__all__ = ["Layer", "known_types", "layer_class", "register"]
