"""The shipped examples build and train a few iterations: examples/lenet_layerwise.schedule (LeNet, three stages,
temporary auxiliary heads) with tools/train_layerwise.py, and examples/kd_from_caffemodel*.prototxt (a LeNet
teacher loaded from a caffemodel by layer name, frozen, distilled into an MLP) with `pipeline train`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("pipeline.ops.distill")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """The data `make train` builds (the embedded digits), in a temporary folder."""
    from pipeline.data.prepare import prepare_mnist

    data = tmp_path_factory.mktemp("data")
    prepare_mnist(data, None, download=False)
    return data


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the solvers name their nets relative to the repository root


def test_layerwise_lenet_example_runs_its_three_stages(mnist, tmp_path, capsys, at_root):
    from pipeline.cli.tools import train_layerwise
    from pipeline.transfer.surgery import read_weights

    run = tmp_path / "run"
    argv = ["--solver", "solvers/lenet_solver.prototxt", "--schedule", "examples/lenet_layerwise.schedule"]
    for value in (f"run={run}", f"data_root={mnist}", "iters=2", "test_iter=1", "random_seed=1"):
        argv += ["--set", value]
    assert train_layerwise.main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    for stage in ("conv1", "conv2", "classifier"):
        assert f"stage {stage}: iter 2 done" in out
    assert "aux_conv1_accuracy" in out and "aux_conv2_accuracy" in out
    final = read_weights(str(run / "lenet_classifier_iter_2.caffemodel"))
    assert {"conv1", "conv2", "ip1", "ip2"} <= set(final) and not any(k.startswith("aux_") for k in final)
    assert (run / "lenet_layerwise.state").read_text().count("done: true") == 3


def test_kd_from_caffemodel_example_loads_and_freezes_the_teacher(mnist, tmp_path, capsys, at_root):
    from pipeline.cli import main
    from pipeline.net import Net
    from pipeline.text.prototxt import read_net
    from pipeline.transfer.surgery import read_weights
    from pipeline.weights.io import save_caffemodel

    # A LeNet caffemodel with the layer names of the one `make train` writes (runs/story/teacher/lenet_iter_N).
    teacher = tmp_path / "teacher.caffemodel"
    save_caffemodel(Net(read_net("prototxt/lenet.prototxt", {"data_root": str(mnist)}), "TEST", seed=5), teacher)
    run = tmp_path / "kd"
    argv = ["train", "--solver", "examples/kd_from_caffemodel_solver.prototxt", "--weights", str(teacher)]
    for value in (f"run={run}", f"data_root={mnist}", "max_iter=3", "test_iter=1", "test_interval=3"):
        argv += ["--set", value]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"Copied 4 layers from {teacher}: conv1, conv2, ip1, ip2" in err
    assert "teacher_accuracy = " in err and "Optimization Done." in err
    given, trained = read_weights(str(teacher)), read_weights(str(run / "student_iter_3.caffemodel"))
    for layer in ("conv1", "conv2", "ip1", "ip2"):  # frozen: lr_mult 0
        assert all(np.array_equal(a, b) for a, b in zip(given[layer], trained[layer])), layer
    assert trained["student_fc1"][0].shape == (64, 784)
