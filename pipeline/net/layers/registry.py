"""Layer registry: Caffe type name -> Layer class. One registration per layer file."""

from __future__ import annotations

from pipeline.errors import NetBuildError
from pipeline.registry import Registry

LAYERS: Registry[type] = Registry("layer type")


def register(*type_names: str):
    """Class decorator: `@register("ReLU")`. A type registered twice is a programming error."""

    def decorate(cls):
        LAYERS.register(*type_names)(cls)
        cls.type_name = type_names[0]
        if cls.__dict__.get("is_loss") is None and type_names[0].endswith("Loss"):
            cls.is_loss = True
        return cls

    return decorate


def layer_class(type_name: str, layer_name: str = "?"):
    if type_name in LAYERS:
        return LAYERS.get(type_name)
    close = closest_types(type_name)
    hint = f" (did you mean {', '.join(repr(t) for t in close)}?)" if close else ""
    known = ", ".join(LAYERS.keys())
    raise NetBuildError(f"unknown layer type '{type_name}'{hint}. Known types: {known}", layer_name, type_name or "''")


def closest_types(type_name: str, n: int = 3) -> list[str]:
    """The registered types nearest to a misspelt one (case ignored: `relu` finds ReLU first)."""
    return LAYERS.closest(type_name, n)


def known_types() -> list[str]:
    return LAYERS.keys()
