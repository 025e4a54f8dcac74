"""Every Caffe layer type, one module per type (or per tight family), each registering itself on import."""

import importlib
import pkgutil

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import known_types, layer_class, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Layer", "known_types", "layer_class", "register"]
