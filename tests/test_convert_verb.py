"""The convert verb and tools/convert.py: default output paths, every target format, the summary, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from export_util import TOL, zoo_deploy
from model_zoo_util import ZOO

from pipeline.cli import main as cli_main
from pipeline.export import default_output, load_safetensors, run_onnx
from pipeline.net import Net
from pipeline.prototxt import read_net
from pipeline.weights import copy_weights, save_caffemodel


# ----- the convert verb --------------------------------------------------------------------------------------------
def test_default_output_lies_beside_the_weights(tmp_path):
    assert default_output(tmp_path / "m.caffemodel", "onnx") == tmp_path / "m.onnx"
    assert default_output(tmp_path / "m.caffemodel.h5", "pt") == tmp_path / "m.safetensors"
    assert default_output(tmp_path / "m.caffemodel.h5", "caffemodel") == tmp_path / "m.caffemodel"
    assert default_output(tmp_path / "m.caffemodel", "caffemodel") == tmp_path / "m.converted.caffemodel"
    assert default_output(tmp_path / "m.caffemodel", "h5") == tmp_path / "m.caffemodel.h5"


@pytest.fixture(scope="module")
def lenet_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lenet")
    net = zoo_deploy("lenet", deploy_batch=1)
    save_caffemodel(net, folder / "lenet.caffemodel")
    return folder, net


@pytest.mark.parametrize("to", ["onnx", "pt", "caffemodel", "h5", "pt2"])
def test_convert_verb_writes_beside_the_weights_and_summarises(lenet_files, capsys, to):
    folder, net = lenet_files
    weights = folder / "lenet.caffemodel"
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
    assert f"wrote {out}" in printed
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
        load_safetensors(fresh, out) if to == "pt" else copy_weights(fresh, out)
        with torch.no_grad():
            assert torch.equal(fresh(x)["prob"], want)


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
        "pt",
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
