"""The convert verb and tools/convert.py: default output paths (the current folder, never an input), every target
format, the summary, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from export_util import TOL, zoo_deploy
from model_zoo_util import ZOO
from safetensors.torch import load_file

from pipeline.cli import main as cli_main
from pipeline.errors import WeightsError
from pipeline.export import ConvertRequest, DeployModule, convert, default_output, run_onnx
from pipeline.net import Net
from pipeline.text.prototxt import read_net
from pipeline.weights.io import copy_weights, save_caffemodel


# ----- the convert verb --------------------------------------------------------------------------------------------
def test_default_output_is_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "models" / "m.caffemodel"
    assert default_output(weights, "onnx") == Path("m.onnx")
    assert default_output(tmp_path / "m.caffemodel.h5", "safetensors") == Path("m.safetensors")
    assert default_output(tmp_path / "m.caffemodel.h5", "pt") == Path("m.pt")
    assert default_output(tmp_path / "m.safetensors", "pt2") == Path("m.pt2")
    assert default_output(tmp_path / "m.caffemodel.h5", "caffemodel") == Path("m.caffemodel")
    assert default_output(weights, "h5") == Path("m.caffemodel.h5")
    assert default_output(weights, "onnx", tmp_path / "out") == tmp_path / "out" / "m.onnx"
    # The weights in the current folder: a name of their own rather than theirs.
    (tmp_path / "m.caffemodel").write_bytes(b"x")
    assert default_output(tmp_path / "m.caffemodel", "caffemodel") == Path("m.converted.caffemodel")
    assert default_output("m.caffemodel", "caffemodel") == Path("m.converted.caffemodel")


@pytest.fixture(scope="module")
def lenet_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lenet")
    net = zoo_deploy("lenet", deploy_batch=1)
    save_caffemodel(net, folder / "lenet.caffemodel")
    return folder, net


@pytest.mark.parametrize("to", ["onnx", "safetensors", "pt", "caffemodel", "h5", "pt2"])
def test_convert_verb_writes_to_the_current_folder_and_summarises(lenet_files, capsys, tmp_path, monkeypatch, to):
    folder, net = lenet_files
    weights = folder / "lenet.caffemodel"
    monkeypatch.chdir(tmp_path)
    code = cli_main(
        [
            "convert",
            "--model",
            str(ZOO / "lenet.prototxt"),
            "--set",
            "deploy=true",
            "--set",
            "deploy_batch=1",
            "--weights",
            str(weights),
            "--to",
            to,
            "--data-prototxt",
            str(ZOO / "lenet.prototxt"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    out = default_output(weights, to)
    assert f"wrote {out}" in printed and (tmp_path / out).is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["lenet.caffemodel"]  # nothing written beside the weights
    for expected in (
        "conv1",
        "Convolution",
        "conv1[1, 20, 24, 24]",
        "400,500",
        "total parameters: 431,080",
        "outputs: prob [1, 10]",
        "multiply by scale 0.00390625",
        "channels: one (grey)",
    ):
        assert expected in printed, expected
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        want = net(x)["prob"]
    if to == "onnx":
        got = torch.from_numpy(run_onnx(out, {"data": x.numpy()})["prob"])
        torch.testing.assert_close(got, want, rtol=0, atol=TOL)
        assert "onnxruntime vs PyTorch: max difference" in printed
    elif to == "pt2":
        got = torch.export.load(out).module()(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        fresh = Net(read_net(ZOO / "lenet.prototxt", {"deploy": True}), phase="TEST", seed=7)
        copy_weights(fresh, out)  # the reader is chosen by the file's content
        with torch.no_grad():
            assert torch.equal(fresh(x)["prob"], want)
    if to in ("pt", "safetensors"):
        # A state dict keyed by Caffe layer and blob name: the exported module's own keys.
        state = torch.load(out, weights_only=True) if to == "pt" else load_file(out)
        assert list(state)[:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
        module = DeployModule(Net(read_net(ZOO / "lenet.prototxt", {"deploy": True}), phase="TEST", seed=9))
        assert list(module.state_dict()) == list(state)
        assert str(module.load_state_dict(state)) == "<All keys matched successfully>"
        with torch.no_grad():
            assert torch.equal(module(x), want)


def test_convert_never_overwrites_an_input(lenet_files, tmp_path, monkeypatch, capsys):
    folder, _ = lenet_files
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "lenet.caffemodel"
    weights.write_bytes((folder / "lenet.caffemodel").read_bytes())
    model = tmp_path / "lenet.prototxt"
    model.write_text((ZOO / "lenet.prototxt").read_text())
    before = {p: p.read_bytes() for p in (weights, model)}
    base = ["convert", "--model", str(model), "--set", "deploy=true", "--weights", str(weights)]
    # Asked in so many words (also through another spelling of the path, or a link): a clear error, nothing written.
    link = tmp_path / "link.caffemodel"
    link.symlink_to(weights)
    for to, out in [
        ("caffemodel", weights),
        ("caffemodel", Path("lenet.caffemodel")),
        ("caffemodel", tmp_path / "sub" / ".." / "lenet.caffemodel"),
        ("caffemodel", link),
        ("onnx", model),
        ("h5", model),
    ]:
        assert cli_main([*base, "--to", to, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"it is the input file {weights if out != model else model}" in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.caffemodel", "lenet.prototxt", "link.caffemodel"]
    # By default: a name of its own beside the input in the current folder.
    assert cli_main([*base, "--to", "caffemodel"]) == 0
    assert "wrote lenet.converted.caffemodel" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in before} == before


def test_convert_writes_atomically(lenet_files, tmp_path, monkeypatch):
    folder, _ = lenet_files
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "lenet.pt"
    out.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    request = dict(model=ZOO / "lenet.prototxt", weights=[folder / "lenet.caffemodel"], variables={"deploy": True})
    with pytest.raises(WeightsError, match="No space left"):
        convert(ConvertRequest(to="pt", **request))
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["lenet.pt"]


def test_convert_verb_errors_are_one_clear_line(lenet_files, capsys, tmp_path):
    folder, _ = lenet_files
    base = ["convert", "--model", str(ZOO / "lenet.prototxt"), "--set", "deploy=true"]
    cases = [
        (["--weights", str(tmp_path / "missing.caffemodel"), "--to", "onnx"], "missing.caffemodel: cannot read"),
        (
            ["--weights", str(folder / "lenet.caffemodel"), "--to", "onnx", "--input-shape", "data=a,b"],
            "--input-shape expects",
        ),
    ]
    other = Net(read_net(ZOO / "cifar10_quick.prototxt", {"deploy": True}), phase="TEST")
    save_caffemodel(other, tmp_path / "other.caffemodel")
    cases.append((["--weights", str(tmp_path / "other.caffemodel"), "--to", "pt"], "shape mismatch"))
    for extra, message in cases:
        assert cli_main(base + extra) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    train_test = [
        "convert",
        "--model",
        str(ZOO / "lenet.prototxt"),
        "--weights",
        str(folder / "lenet.caffemodel"),
        "--to",
        "safetensors",
        "--out",
        str(tmp_path / "x.safetensors"),
    ]
    assert cli_main(train_test) == 1
    assert "--input-shape data=" in capsys.readouterr().err
    assert cli_main([*train_test, "--input-shape", "data=1,1,28,28"]) == 0
    assert "from data layer 'mnist'" in capsys.readouterr().out


def test_tools_convert_script(lenet_files, tmp_path):
    folder, _ = lenet_files
    out = tmp_path / "lenet.safetensors"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "convert.py"),
            "--model",
            str(ZOO / "lenet.prototxt"),
            "--set",
            "deploy=true",
            "--weights",
            str(folder / "lenet.caffemodel"),
            "--to",
            "pt",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and out.exists()
