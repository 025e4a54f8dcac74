"""Layer registry: Caffe type name -> Layer class. One registration per layer file."""

from __future__ import annotations

from pipeline.errors import NetBuildError

_LAYERS: dict[str, type] = {}


def register(*type_names: str):
    """Class decorator: `@register("ReLU")`. A type registered twice is a programming error."""

    def decorate(cls):
        for name in type_names:
            if name in _LAYERS:
                raise RuntimeError(f"layer type {name!r} registered twice ({_LAYERS[name].__name__}, {cls.__name__})")
            _LAYERS[name] = cls
        cls.type_name = type_names[0]
        if cls.__dict__.get("is_loss") is None and type_names[0].endswith("Loss"):
            cls.is_loss = True
        return cls

    return decorate


def layer_class(type_name: str, layer_name: str = "?"):
    try:
        return _LAYERS[type_name]
    except KeyError:
        known = ", ".join(sorted(_LAYERS))
        raise NetBuildError(f"unknown layer type '{type_name}'. Known types: {known}", layer_name) from None


def known_types() -> list[str]:
    return sorted(_LAYERS)
