"""pipeline/registry.py: one Registry class behind every name -> object table, refusing duplicates."""

import importlib
import pkgutil

import pytest

import pipeline
from pipeline.registry import ALL, DuplicateKeyError, Registry, UnknownKeyError


def _import_everything() -> list[Registry]:
    """Every pipeline module imported (so every registry exists and is filled), then every Registry made."""
    for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if module.name == "pipeline.__main__":
            continue
        importlib.import_module(module.name)
    return list(ALL)


REGISTRIES = _import_everything()


def test_register_get_contains_keys_iter():
    reg = Registry("colour")

    @reg.register("red", "rouge")
    def red():
        return "r"

    reg.add("blue", "b")
    assert reg.get("red") is red and reg["rouge"] is red
    assert "red" in reg and "green" not in reg
    assert reg.keys() == ["blue", "red", "rouge"] == list(reg)
    assert len(reg) == 3
    assert dict(reg.items())["blue"] == "b"


def test_duplicate_key_is_refused_naming_both_definitions():
    reg = Registry("colour")

    @reg.register("red")
    def first():
        pass

    with pytest.raises(DuplicateKeyError) as info:

        @reg.register("red")
        def second():
            pass

    message = str(info.value)
    assert "colour 'red' registered twice" in message
    assert "first" in message and "second" in message and "test_registry.py:" in message
    assert reg.get("red") is first


def test_unknown_key_says_did_you_mean_and_lists_known():
    reg = Registry("colour")
    for key in ("ReLU", "Red", "Blue"):
        reg.add(key, key)
    with pytest.raises(UnknownKeyError) as info:
        reg.get("relu")
    assert str(info.value).startswith("unknown colour 'relu' (did you mean 'ReLU'")
    assert "Known: Blue, ReLU, Red" in str(info.value)
    assert info.value.suggestions[0] == "ReLU"
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownKeyError, match=r"unknown colour 'zzzz'\. Known"):
        reg.get("zzzz")


def test_the_known_registries_are_all_found():
    names = {reg.name for reg in REGISTRIES}
    assert {"layer type", "solver type", "filler", "lr_policy", "command"} <= names


@pytest.mark.parametrize("registry", [r for r in REGISTRIES if r.name != "colour"], ids=lambda r: r.name)
def test_every_registry_is_a_registry_and_filled(registry):
    assert isinstance(registry, Registry)
    assert len(registry) > 0, f"registry {registry.name!r} is empty after importing pipeline"


def test_layer_registry_keeps_its_messages():
    from pipeline.errors import NetBuildError
    from pipeline.net.layers.registry import LAYERS, layer_class, register

    with pytest.raises(NetBuildError, match=r"unknown layer type 'relu' \(did you mean 'ReLU'"):
        layer_class("relu", "r1")
    with pytest.raises(DuplicateKeyError, match="layer type 'ReLU' registered twice"):
        register("ReLU")(type("AnotherReLU", (), {}))
    assert "ReLU" in LAYERS
