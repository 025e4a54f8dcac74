"""The C++ op libraries' build key (pipeline/ops/build.py): one folder per sources, flags, compiler and CPU."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.ops import build

FLAGS = ("-O2", "-std=c++17")
NATIVE = ("-O3", "-march=native")


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "op.cpp"
    path.write_text("int f() { return 1; }\n")
    return path


def test_key_is_stable_and_follows_sources_flags_and_compiler(source):
    key = build.build_key([source], FLAGS, "g++ 12")
    assert key == build.build_key([source], FLAGS, "g++ 12") and len(key) == 12
    assert key != build.build_key([source], ("-O3", "-std=c++17"), "g++ 12")
    assert key != build.build_key([source], FLAGS, "g++ 13")
    source.write_text("int f() { return 2; }\n")
    assert key != build.build_key([source], FLAGS, "g++ 12")


def test_cpu_counts_only_for_code_targeting_the_build_machine(source):
    assert build.build_key([source], FLAGS, "g++", "cpu A") == build.build_key([source], FLAGS, "g++", "cpu B")
    assert build.build_key([source], NATIVE, "g++", "cpu A") != build.build_key([source], NATIVE, "g++", "cpu B")
    assert build.targets_build_cpu(build.DISTILL.cflags) and not build.targets_build_cpu(build.CAFFE_CPU.cflags)
    assert build.cpu_identity()


def test_every_library_gets_its_own_keyed_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folders = [build.library_folder(library) for library in build.LIBRARIES]
    for (name, folder), library in zip(folders, build.LIBRARIES):
        assert name.startswith(library.name + "_") and folder == tmp_path / name
    assert len({folder for _, folder in folders}) == len(folders)


def test_a_build_is_announced_once_then_loaded_from_its_folder(monkeypatch, tmp_path, source, capsys):
    import torch
    import torch.utils.cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "CSRC", tmp_path)
    library = build.OpLibrary("test_op", ("op.cpp",), FLAGS, "test op", "a moment")
    compiled, loaded = [], []

    def fake_load(name, build_directory, **kwargs):  # what cpp_extension.load leaves: the library in the folder
        compiled.append(name)
        path = f"{build_directory}/{name}.so"
        open(path, "wb").close()
        return path

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    first = build.build_op_library(library)
    assert "building the test op (a moment, once; cached in " in capsys.readouterr().err
    second = build.build_op_library(library)
    assert first == second and compiled == [first.stem] and loaded == [str(first)]
    assert capsys.readouterr().err == ""


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path, source):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setattr(build, "CSRC", tmp_path)
    library = build.OpLibrary("test_op", ("op.cpp",), FLAGS, "test op", "a moment")
    with pytest.raises(PipelineError, match="needs a compiler: 'no-such-compiler-here' was not found"):
        build.build_op_library(library)
