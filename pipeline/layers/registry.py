"""Layer registry: Caffe type name -> Layer class. One registration per layer file."""

from __future__ import annotations

import difflib

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
        close = closest_types(type_name)
        hint = f" (did you mean {', '.join(repr(t) for t in close)}?)" if close else ""
        raise NetBuildError(
            f"unknown layer type '{type_name}'{hint}. Known types: {known}", layer_name, type_name or "''"
        ) from None


def closest_types(type_name: str, n: int = 3) -> list[str]:
    """The registered types nearest to a misspelt one (case ignored: `relu` finds ReLU first)."""
    by_lower: dict[str, list[str]] = {}
    for name in sorted(_LAYERS):
        by_lower.setdefault(name.lower(), []).append(name)
    close = difflib.get_close_matches(type_name.lower(), list(by_lower), n=n, cutoff=0.6)
    return [name for lower in close for name in by_lower[lower]][:n]


def known_types() -> list[str]:
    return sorted(_LAYERS)
