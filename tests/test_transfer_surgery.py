"""Net surgery round-trips through caffemodel files; head replacement and the fine-tuning recipe."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import shared_path

from pipeline.errors import WeightsError
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import net_from_string, read_net
from pipeline.transfer import finetune, surgery
from pipeline.transfer.layerwise import LayerwiseRun
from pipeline.transfer.netedit import TransferError, replace_head
from pipeline.weights.caffemodel import scan_caffemodel
from pipeline.weights.io import copy_weights, save_caffemodel, save_caffemodel_h5

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


def test_surgery_reads_any_weights_format_by_content(folder):
    from pipeline.export import save_safetensors, save_torch

    net = Net(net_from_string(NET), seed=4)
    save_caffemodel(net, "w.caffemodel")
    save_safetensors(net, "w.bin")  # names that say nothing, or something else
    save_torch(net, "w.safetensors")
    np.savez(
        "w.npz", **{f"{n}.{a}": getattr(net.layer(n), a).detach().numpy() for n in net.params for a in ("weight",)}
    )
    reference = surgery.read_weights("w.caffemodel")
    assert equal(surgery.read_weights("w.bin"), reference) and equal(surgery.read_weights("w.safetensors"), reference)
    assert equal(surgery.read_weights("w.npz"), {n: b[:1] for n, b in reference.items()})


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
    from pipeline.cli.tools import net_surgery

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
    from pipeline.cli.tools import finetune as tool

    source_model()
    base = ["--model", "net.prototxt", "--weights", "src.caffemodel", "--num-classes", "2", "--prefix", "ft/x"]
    Path("net.prototxt").write_text(NET)
    assert tool.main(base + ["--replace-head", "ip2", "--head-bottom", "fc7"]) == 1
    assert "bottom blob 'fc7' is not produced" in capsys.readouterr().err
    assert tool.main(base + ["--replace-head", "ip2", "--head-iters", "2", "--full-iters", "2", "--no-progress"]) == 0
    assert "final weights: ft/x_full_iter_2.caffemodel" in capsys.readouterr().out


def test_finetune_cli_refuses_a_set_nothing_reads(folder, capsys):
    """--set names a template variable of the model (or of --solver and its net, else a solver field)."""
    from pipeline.cli.tools import finetune as tool

    source_model()
    Path("net.prototxt").write_text(NET)
    base = ["--model", "net.prototxt", "--weights", "src.caffemodel", "--num-classes", "2", "--prefix", "ft/x"]
    base += ["--replace-head", "ip2", "--head-iters", "1", "--full-iters", "0", "--no-progress"]
    assert tool.main([*base, "--set", "nope=1"]) == 1
    assert "unused --set 'nope': not a template variable of net.prototxt" in capsys.readouterr().err


# ----- old (V1/V0) caffemodels: what we write has the shapes Caffe's net.save() writes ------------------------------
V1_KINDS = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT"}


def old_caffemodel(path: str, version: str = "V1", seed: int = 1) -> Net:
    """NET's conv and InnerProduct layers saved as a V1 (or V0) Caffe did: legacy 4-D num/channels/height/width
    blobs ([1, 1, 6, 27] for ip1's weight). Returns the V2 net whose blobs they are."""
    net = Net(net_from_string(NET), seed=seed)
    old = caffe_pb2.NetParameter(name="old", input=["data"])
    for layer in net.layers:
        if layer.type_name not in V1_KINDS:
            continue
        entry = old.layers.add(bottom=layer.bottom_names, top=layer.top_names)
        if version == "V1":
            entry.name, entry.type = layer.name, getattr(caffe_pb2.V1LayerParameter, V1_KINDS[layer.type_name])
            target = entry
        else:
            target = entry.layer
            target.name, target.type = layer.name, "conv" if layer.type_name == "Convolution" else "innerproduct"
        for blob in layer.blobs:
            proto = target.blobs.add()
            proto.num, proto.channels, proto.height, proto.width = [1] * (4 - blob.dim()) + list(blob.shape)
            proto.data.extend(blob.detach().contiguous().flatten().tolist())
    Path(path).write_bytes(old.SerializeToString())
    return net


def stored_shapes(path) -> dict[str, list[tuple[tuple[int, ...], bool]]]:
    return {name: [(b.shape, b.legacy) for b in blobs] for name, blobs in scan_caffemodel(path) if blobs}


def net_shapes(net) -> dict[str, list[tuple[tuple[int, ...], bool]]]:
    return {layer.name: [(tuple(b.shape), False) for b in layer.blobs] for layer in net.layers if layer.blobs}


@pytest.mark.parametrize("version", ["V1", "V0"])
def test_net_surgery_on_an_old_caffemodel_writes_the_layers_blob_shapes(folder, version, capsys):
    from pipeline.cli.tools import net_surgery

    net = old_caffemodel("old.caffemodel", version)
    assert stored_shapes("old.caffemodel")["ip1"] == [((1, 1, 6, 27), True), ((1, 1, 1, 6), True)]
    assert {n: [a.shape for a in arrays] for n, arrays in surgery.read_weights("old.caffemodel").items()} == {
        n: [s for s, _ in shapes] for n, shapes in net_shapes(net).items()
    }
    assert net_surgery.main(["--weights", "old.caffemodel", "--list"]) == 0
    assert "ip1: [6, 27], [6]" in capsys.readouterr().out
    for out in ("out.caffemodel", "out.caffemodel.h5"):
        assert net_surgery.main(["--weights", "old.caffemodel", "--drop", "ip2", "--output", out]) == 0
        fresh = Net(net_from_string(NET), seed=9)
        report = copy_weights(fresh, out)  # what `test --weights out` does: V2 shapes, compared exactly
        assert report.copied == ["conv1", "ip1"] and report.missing == ["ip2"]
        for name in report.copied:
            assert all(torch.equal(a, b) for a, b in zip(fresh.params[name], net.params[name])), name
    wanted = net_shapes(net)
    del wanted["ip2"]
    assert stored_shapes("out.caffemodel") == wanted  # shape fields, no legacy dims, as net.save() writes them


def test_other_writers_upgrade_old_blob_shapes_too(folder):
    """Weights loaded from a V1 file into a net take the net's shapes: convert and solver snapshots write those."""
    from pipeline.export import ConvertRequest, convert
    from pipeline.solvers import build_solver

    net = old_caffemodel("old.caffemodel")
    Path("net.prototxt").write_text(NET)
    for to in ("caffemodel", "h5"):
        out = convert(
            ConvertRequest(model="net.prototxt", weights=["old.caffemodel"], to=to, input_shapes={"data": (1, 1, 5, 5)})
        ).out
        assert out == Path("old.converted.caffemodel" if to == "caffemodel" else "old.caffemodel.h5")
        copy_weights(Net(net_from_string(NET)), out)
    assert stored_shapes("old.converted.caffemodel") == net_shapes(net)
    param = caffe_pb2.SolverParameter(base_lr=0.0, lr_policy="fixed", max_iter=0, snapshot_prefix="snap/v1")
    param.net_param.CopyFrom(net_from_string(NET))
    Path("snap").mkdir()
    solver = build_solver(param, progress=False)
    copy_weights(solver.net, "old.caffemodel")
    solver.snapshot()
    assert stored_shapes("snap/v1_iter_0.caffemodel") == net_shapes(net)


def test_net_surgery_on_real_v1_lenet_writes_what_caffe_saves(folder):
    """The V1 LeNet of ../shared: its surgery output has the shapes of the same model saved by a V2 Caffe."""
    from pipeline.cli.tools import net_surgery

    v1 = shared_path("caffe-models", "lenet_v1", "lenet_iter_10000.caffemodel")
    v2 = shared_path("caffe-models", "lenet_v2", "lenet_iter_10000.caffemodel")
    assert stored_shapes(v1)["ip1"] == [((1, 1, 500, 800), True), ((1, 1, 1, 500), True)]
    assert net_surgery.main(["--weights", str(v1), "--rename", "ip2=fc", "--output", "lenet.caffemodel"]) == 0
    written = stored_shapes("lenet.caffemodel")
    assert written["ip1"] == [((500, 800), False), ((500,), False)]
    reference = stored_shapes(v2)
    reference["fc"] = reference.pop("ip2")
    assert written == reference
    deploy = shared_path("caffe-models", "lenet_v1", "lenet.prototxt")
    lenet = Net(read_net(deploy), phase="TEST")
    assert copy_weights(lenet, "lenet.caffemodel").missing == ["ip2"]
