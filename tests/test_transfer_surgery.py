"""Net surgery round-trips through caffemodel files; head replacement and the fine-tuning recipe."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import WeightsError
from pipeline.net import Net
from pipeline.prototxt import net_from_string
from pipeline.transfer import finetune, surgery
from pipeline.transfer.layerwise import LayerwiseRun
from pipeline.transfer.netedit import TransferError, replace_head
from pipeline.weights import copy_weights, save_caffemodel, save_caffemodel_h5

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

NET = """
name: "small"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "train.txt" batch_size: 10 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(0)
    x = rng.randn(40, 1, 5, 5).astype(np.float32)
    y = (x[:, 0, 2, 2] > 0).astype(np.float32)  # two classes: the new task
    with h5py.File("train.h5", "w") as f:
        f["data"], f["label"] = x, y
    Path("train.txt").write_text("train.h5\n")
    return tmp_path


def source_model(path="src.caffemodel", seed=1) -> str:
    save_caffemodel(Net(net_from_string(NET), seed=seed), path)
    return path


def equal(a, b) -> bool:
    return list(a) == list(b) and all(
        len(a[k]) == len(b[k]) and all(np.array_equal(x, y) for x, y in zip(a[k], b[k])) for k in a
    )


@pytest.mark.parametrize("suffix", [".caffemodel", ".caffemodel.h5"])
def test_surgery_round_trips_through_the_file(folder, suffix):
    original = surgery.read_weights(source_model())
    edited = surgery.rename(original, {"conv1": "conv_st_1"})
    edited = surgery.copy(edited, {"ip1": "ip1_copy"})
    edited = surgery.drop(edited, ["ip2"])
    edited = surgery.merge(edited, surgery.add_prefix(original, "t_"))
    surgery.save_weights(edited, "out" + suffix)
    back = surgery.read_weights("out" + suffix)
    assert equal(back, edited)
    assert list(back) == ["conv_st_1", "ip1", "ip1_copy", "t_conv1", "t_ip1", "t_ip2"]
    assert np.array_equal(back["conv_st_1"][0], original["conv1"][0])


def test_save_into_a_net_writes_a_full_caffemodel(folder):
    original = surgery.read_weights(source_model())
    renamed_net = net_from_string(NET.replace('"conv1"', '"conv_st_1"'))
    net = Net(renamed_net, seed=5)
    report = surgery.save_weights(surgery.rename(original, {"conv1": "conv_st_1"}), "full.caffemodel", net)
    assert sorted(report.copied) == ["conv_st_1", "ip1", "ip2"]
    loaded = Net(renamed_net, seed=9)
    copy_weights(loaded, "full.caffemodel")
    assert np.array_equal(loaded.params["conv_st_1"][0].detach().numpy(), original["conv1"][0])
    with pytest.raises(WeightsError, match="shape mismatch"):
        surgery.save_weights(surgery.rename(original, {"ip1": "ip2", "ip2": "ip1"}), "bad.caffemodel", net)


def test_reinit_takes_the_nets_fresh_blobs(folder):
    original = surgery.read_weights(source_model(seed=1))
    net = Net(net_from_string(NET), seed=2)
    fresh = surgery.reinit(original, net, ["ip2"])
    assert np.array_equal(fresh["ip2"][0], net.params["ip2"][0].detach().numpy())
    assert np.array_equal(fresh["ip1"][0], original["ip1"][0])
    with pytest.raises(WeightsError, match="no layer 'relu1' with blobs"):
        surgery.reinit(original, net, ["relu1"])


def test_npz_input_and_h5_snapshot_input(folder):
    net = Net(net_from_string(NET), seed=1)
    save_caffemodel_h5(net, "w.caffemodel.h5")
    np.savez("w.npz", **{f"{n}/{i}": b.detach().numpy() for n, bs in net.params.items() for i, b in enumerate(bs)})
    assert equal(surgery.read_weights("w.caffemodel.h5"), surgery.read_weights("w.npz"))


@pytest.mark.parametrize(
    "operation, message",
    [
        (lambda w: surgery.rename(w, {"conv9": "x"}), "no layer 'conv9'"),
        (lambda w: surgery.rename(w, {"ip1": "ip2"}), "the same name: ['ip2']"),
        (lambda w: surgery.copy(w, {"ip1": "ip2"}), "'ip2' exists already"),
        (lambda w: surgery.drop(w, ["fc*"]), "pattern 'fc*' matches no layer"),
        (lambda w: surgery.merge(w, w), "layers in both weight sets"),
        (lambda w: surgery.parse_map("conv1"), "not a layer mapping"),
        (lambda w: surgery.read_weights("missing.caffemodel"), "not found"),
    ],
)
def test_surgery_errors(folder, operation, message):
    weights = surgery.read_weights(source_model())
    with pytest.raises(WeightsError, match=re.escape(message)):
        operation(weights)


def test_surgery_cli(folder, capsys):
    import net_surgery

    source_model()
    args = ["--weights", "src.caffemodel", "--rename", "conv1=conv_st_1", "--prefix", "s_", "--output", "o.caffemodel"]
    assert net_surgery.main(args) == 0
    assert list(surgery.read_weights("o.caffemodel")) == ["s_conv_st_1", "s_ip1", "s_ip2"]
    assert net_surgery.main(["--weights", "src.caffemodel", "--rename", "conv9=x", "--output", "p.caffemodel"]) == 1
    assert "no layer 'conv9'" in capsys.readouterr().err and not Path("p.caffemodel").exists()


# ----- head replacement and fine-tuning ----------------------------------------------------------------------------
def test_replace_head_renames_and_resizes():
    edited = replace_head(net_from_string(NET), "ip2", 2)
    layer = next(layer for layer in edited.layer if layer.name == "ip2_new")
    assert layer.inner_product_param.num_output == 2 and list(layer.top) == ["ip2"] and list(layer.bottom) == ["ip1"]
    attached = replace_head(net_from_string(NET), "ip2", 2, "head", bottom="conv1")
    assert list(next(layer for layer in attached.layer if layer.name == "head").bottom) == ["conv1"]


@pytest.mark.parametrize(
    "head, bottom, message",
    [
        ("ip3", None, "no layer named 'ip3' to replace (did you mean 'ip2'"),
        ("ip2", "fc7", "its bottom blob 'fc7' is not produced by any layer before it"),
        ("ip1", "ip2", "bottom blob 'ip2' is not produced by any layer before it"),
        ("relu1", None, "only InnerProduct or Convolution heads"),
    ],
)
def test_replace_head_errors(head, bottom, message):
    with pytest.raises(TransferError, match=re.escape(message)):
        replace_head(net_from_string(NET), head, 2, bottom=bottom)


def test_finetune_trains_the_head_then_everything(folder):
    source_model()
    solver = finetune.default_solver("ft/small", seed=3)
    Path("ft").mkdir()
    recipe = finetune.Recipe(head_iters=4, head_lr=0.1, full_iters=3)
    param, schedule, head = finetune.prepare(net_from_string(NET), "ip2", 2, solver, recipe)
    assert head == "ip2_new" and [s.name for s in schedule.stage] == ["head", "full"]
    assert schedule.stage[1].base_lr == pytest.approx(0.01)
    result = LayerwiseRun(param, schedule, weights=["src.caffemodel"], progress=False).run()
    src = surgery.read_weights("src.caffemodel")
    after_head = surgery.read_weights(result.stages[0].weights)
    final = surgery.read_weights(result.final_weights)
    assert after_head["ip2_new"][0].shape == (2, 6)
    for name in ("conv1", "ip1"):
        assert all(np.array_equal(a, b) for a, b in zip(src[name], after_head[name]))  # body frozen
        assert not np.array_equal(after_head[name][0], final[name][0])  # then trained
    assert "ip2" not in final  # the old head is gone


def test_finetune_cli_checks_before_training(folder, capsys):
    import finetune as tool

    source_model()
    base = ["--model", "net.prototxt", "--weights", "src.caffemodel", "--num-classes", "2", "--prefix", "ft/x"]
    Path("net.prototxt").write_text(NET)
    assert tool.main(base + ["--replace-head", "ip2", "--head-bottom", "fc7"]) == 1
    assert "bottom blob 'fc7' is not produced" in capsys.readouterr().err
    assert tool.main(base + ["--replace-head", "ip2", "--head-iters", "2", "--full-iters", "2", "--no-progress"]) == 0
    assert "final weights: ft/x_full_iter_2.caffemodel" in capsys.readouterr().out


def test_finetune_cli_refuses_a_set_nothing_reads(folder, capsys):
    """--set names a template variable of the model (or of --solver and its net, else a solver field)."""
    import finetune as tool

    source_model()
    Path("net.prototxt").write_text(NET)
    base = ["--model", "net.prototxt", "--weights", "src.caffemodel", "--num-classes", "2", "--prefix", "ft/x"]
    base += ["--replace-head", "ip2", "--head-iters", "1", "--full-iters", "0", "--no-progress"]
    assert tool.main([*base, "--set", "nope=1"]) == 1
    assert "unused --set 'nope': not a template variable of net.prototxt" in capsys.readouterr().err
