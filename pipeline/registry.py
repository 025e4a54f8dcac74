"""One registry class for every name -> object table (layer types, solvers, fillers, lr policies, export
forwards, command-line verbs): a key registered twice is an error naming both definitions, and an unknown
key is an error listing the near misses and the known keys.

    LAYERS = Registry("layer type")

    @LAYERS.register("ReLU")
    class ReLU(Layer): ...

    LAYERS.get("relu")   # UnknownKeyError: unknown layer type 'relu' (did you mean 'ReLU'?). Known: ...
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: Every Registry made, in order (tests check each one).
ALL: list[Registry] = []


class DuplicateKeyError(RuntimeError):
    """A key registered twice: a programming error, raised at import."""


class UnknownKeyError(KeyError):
    """A key nobody registered; `suggestions` are the near misses."""

    def __init__(self, message: str, key: str, suggestions: list[str]):
        super().__init__(message)
        self.message = message
        self.key = key
        self.suggestions = suggestions

    def __str__(self) -> str:
        return self.message


def describe(obj: object) -> str:
    """`module.qualname (file:line)` of a function or class, or its repr."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        return repr(obj)
    where = ""
    try:
        where = f" ({inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]})"
    except (TypeError, OSError):
        pass
    return f"{getattr(obj, '__module__', '?')}.{name}{where}"


class Registry(Generic[T]):
    def __init__(self, name: str):
        self.name = name  # what a key names, for messages: "layer type", "filler"
        self._entries: dict[str, T] = {}
        ALL.append(self)

    def add(self, key: str, value: T) -> T:
        if key in self._entries:
            raise DuplicateKeyError(
                f"{self.name} {key!r} registered twice: {describe(self._entries[key])} and {describe(value)}"
            )
        self._entries[key] = value
        return value

    def register(self, *keys: str) -> Callable[[T], T]:
        """Decorator registering its function or class under each of `keys`."""
        if not keys:
            raise TypeError(f"{self.name} registry: register() needs at least one key")

        def decorate(value: T) -> T:
            for key in keys:
                self.add(key, value)
            return value

        return decorate

    def closest(self, key: str, n: int = 3) -> list[str]:
        """The registered keys nearest to a misspelt one (case ignored: `relu` finds ReLU first)."""
        by_lower: dict[str, list[str]] = {}
        for name in sorted(self._entries):
            by_lower.setdefault(name.lower(), []).append(name)
        close = difflib.get_close_matches(key.lower(), list(by_lower), n=n, cutoff=0.6)
        return [name for lower in close for name in by_lower[lower]][:n]

    def unknown(self, key: str) -> UnknownKeyError:
        """The error for an unknown `key`: near misses, then every known key."""
        close = self.closest(key)
        hint = f" (did you mean {', '.join(repr(k) for k in close)}?)" if close else ""
        return UnknownKeyError(f"unknown {self.name} '{key}'{hint}. Known: {', '.join(self.keys())}", key, close)

    def get(self, key: str) -> T:
        try:
            return self._entries[key]
        except KeyError:
            raise self.unknown(key) from None

    def __getitem__(self, key: str) -> T:
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {len(self)} keys)"
