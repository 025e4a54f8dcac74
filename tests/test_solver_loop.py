"""The training loop on a tiny HDF5 net: testing, display, snapshots, resume, iter_size, clipping, failures."""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pytest
import torch
from solver_util import BATCH, kept_logger, make, net_text, solver_param, tiny_folder, weights, write_data

from pipeline.errors import SolverError
from pipeline.glog import get_logger
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.solvers import share_weights
from pipeline.solvers.base import SNAPSHOT, STOP
from pipeline.text.prototxt import net_from_string

RULES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    return tiny_folder(tmp_path, monkeypatch)


@pytest.fixture
def messages():
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Keep()
    log = get_logger()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield lines
    log.removeHandler(handler)


def rule_fields(rule: str) -> dict:
    if rule in ("AdaGrad", "RMSProp"):
        return {"type": rule, "momentum": 0.0}
    if rule == "AdaDelta":
        return {"type": rule, "base_lr": 1.0, "momentum": 0.95, "delta": 1e-6}
    if rule == "Adam":
        return {"type": rule, "base_lr": 0.01, "lr_policy": "multistep", "gamma": 0.5, "stepvalue": [2, 4]}
    return {"type": rule, "lr_policy": "step", "gamma": 0.5, "stepsize": 2}


def test_solve_logs_caffes_lines(folder, messages):
    solver = make(solver_param())
    solver.solve()
    assert messages[messages.index("Solving tiny") + 1] == "Learning Rate Policy: fixed"
    tests = [m for m in messages if "Testing net" in m]
    assert tests == [f"Iteration {i}, Testing net (#0)" for i in (0, 3, 6)]
    assert sum(m.startswith("Iteration ") and " iter/s, " in m for m in messages) == 6
    assert sum(m.startswith("    Train net output #0: loss = ") and "(* 1 = " in m for m in messages) == 6
    assert [m for m in messages if ", lr = " in m][0] == "Iteration 0, lr = 0.05"
    assert "Snapshotting to binary proto file snap/tiny_iter_6.caffemodel" in messages
    assert "Snapshotting solver state to binary proto file snap/tiny_iter_6.solverstate" in messages
    final = messages.index("Snapshotting solver state to binary proto file snap/tiny_iter_6.solverstate")
    assert messages[final + 1].startswith("Iteration 6, loss = ")  # the forward-only epilogue
    assert messages[-1] == "Optimization Done."
    assert os.path.exists("snap/tiny_iter_6.caffemodel")


def test_test_initialization_off_and_display_interval(folder, messages):
    make(solver_param(test_initialization=False, display=2)).solve()
    assert [m for m in messages if "Testing net" in m] == [
        "Iteration 3, Testing net (#0)",
        "Iteration 6, Testing net (#0)",
    ]
    assert [m.split(" (")[0] for m in messages if " iter/s, " in m] == ["Iteration 0", "Iteration 2", "Iteration 4"]


def test_several_test_nets_and_test_loss(folder, messages):
    write_data(folder, seed=2, name="other")
    text = f"""test_net_param {{ {net_text(test="other.txt")} }}
               test_state {{ stage: "a" }} test_state {{ stage: "b" }} test_compute_loss: true"""
    solver = make(solver_param(text, test_iter=[2, 3]))
    assert len(solver.test_nets) == 2
    assert [n.state.stage[:] for n in solver.test_nets] == [["a"], ["b"]]
    solver.test_all()
    assert "Iteration 0, Testing net (#1)" in messages
    assert sum(m.startswith("Test loss: ") for m in messages) == 2
    # the test nets hold the train net's very tensors (Caffe's ShareTrainedLayersWith)
    assert solver.test_nets[1].layer("ip").weight is solver.net.layer("ip").weight


def test_test_iter_must_match_test_nets(folder):
    with pytest.raises(SolverError, match="test_iter must be specified for each test network"):
        make(solver_param(f"test_net_param {{ {net_text()} }}", test_iter=[]))


def test_share_weights_rejects_other_shapes(folder):
    solver = make(solver_param())
    other = Net(
        net_from_string(
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } } '
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }'
        )
    )
    with pytest.raises(SolverError, match="layer 'ip' blob 0: cannot share weights"):
        share_weights(solver.net, other)


def test_average_loss_window(folder):
    solver = make(solver_param(average_loss=3, max_iter=5))
    losses = []
    solver.on_iteration.append(lambda s: losses.append((s.last_loss, s.smoothed_loss)))
    solver.step(5)
    raw = [float(l) for l, _ in losses]
    assert float(losses[2][1]) == pytest.approx(np.mean(raw[:3]), rel=1e-6)
    assert float(losses[4][1]) == pytest.approx(np.mean(raw[2:5]), rel=1e-5)


def test_snapshot_interval_and_hdf5_layout(folder):
    solver = make(solver_param(snapshot=2, snapshot_format=caffe_pb2.SolverParameter.HDF5))
    solver.solve()
    for i in (2, 4, 6):
        assert os.path.exists(f"snap/tiny_iter_{i}.caffemodel.h5")
    with h5py.File("snap/tiny_iter_6.solverstate.h5", "r") as f:
        assert int(f["iter"][0]) == 6 and int(f["current_step"][0]) == 0
        assert f["learned_net"][()] == b"snap/tiny_iter_6.caffemodel.h5"
        assert sorted(f["history"].keys()) == ["0", "1"]
    with h5py.File("snap/tiny_iter_6.caffemodel.h5", "r") as f:
        assert sorted(f["data"].keys()) == ["data", "ip", "loss"]
        np.testing.assert_array_equal(f["data/ip/0"][()], solver.net.layer("ip").weight.detach().numpy())
    assert not [n for n in os.listdir("snap") if n.startswith(".")], "no temporary files left"


def test_snapshot_after_train_off(folder):
    make(solver_param(snapshot_after_train=False)).solve()
    assert os.listdir("snap") == []


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_is_bitwise(rule, fmt, folder):
    """6 iterations straight == 3, snapshot, a new solver restored from it, 3 more (3 batches = 1 epoch). Bit for
    bit: all runs are in this process, with the same thread count and shapes, so the same kernels."""
    fields = {**rule_fields(rule), "snapshot_format": caffe_pb2.SolverParameter.SnapshotFormat.Value(fmt)}
    straight = make(solver_param(**fields))
    losses = []
    straight.on_iteration.append(lambda s: losses.append(s.last_loss))
    straight.step(6)
    first = make(solver_param(**fields))
    first.step(3)
    state = first.snapshot()
    resumed = make(solver_param(**fields, random_seed=7))  # other initial weights: all must come from the snapshot
    resumed_losses = []
    resumed.on_iteration.append(lambda s: resumed_losses.append(s.last_loss))
    resumed.restore(state)
    assert resumed.iter == 3
    resumed.step(3)
    assert resumed_losses == losses[3:]
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(straight.history, resumed.history):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_restore_rejects_other_history(folder):
    solver = make(solver_param(type="Adam"))
    state = solver.snapshot()
    with pytest.raises(SolverError, match="incorrect length of history blobs: 4 in the file, 2 expected"):
        make(solver_param()).restore(state)


def test_iter_size_accumulates_like_a_bigger_batch(folder):
    small = make(solver_param(iter_size=2, momentum=0.0, net=net_text(batch=BATCH // 2)))
    big = make(solver_param(momentum=0.0))
    small.step(1)
    big.step(1)
    for a, b in zip(weights(small), weights(big)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(small.last_loss) == pytest.approx(float(big.last_loss), rel=1e-6)


def test_clipping_uses_the_summed_gradient(folder, messages):
    """Caffe clips the gradient summed over iter_size, then divides by iter_size."""
    solver = make(solver_param(iter_size=2, clip_gradients=0.01, momentum=0.0, weight_decay=0.0, base_lr=1.0))
    before = weights(solver)
    grads = []
    original = solver.apply_update

    def spy():
        grads.extend(p.tensor.grad.clone() for p in solver.net.learnable_params)
        original()

    solver.apply_update = spy
    solver.step(1)
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    scale = 0.01 / norm
    for w0, w1, g, p in zip(before, weights(solver), grads, solver.net.learnable_params):
        np.testing.assert_allclose(w1, w0 - p.lr_mult * g.numpy() * scale / 2, rtol=1e-5, atol=1e-8)
    assert any(m.startswith("Gradient clipping: scaling down gradients (L2 norm ") for m in messages)


def test_nan_in_data_names_the_iteration_and_layer(tmp_path, monkeypatch):
    folder = tiny_folder(tmp_path, monkeypatch)
    write_data(folder, name="train", nan_row=5)
    solver = make(solver_param())
    with pytest.raises(SolverError, match=r"Iteration 1: the loss is nan; .*top 'data' of layer 'data' \(HDF5Data\)"):
        solver.step(3)


def test_diverging_loss_names_the_first_non_finite_layer(folder):
    solver = make(solver_param(base_lr=1e18, momentum=0.0))
    with pytest.raises(SolverError, match=r"Iteration \d+: the loss is (nan|inf).*of layer '(ip|loss)' \("):
        solver.step(6)


@pytest.mark.parametrize("prefix", ["missing/dir/x", "train.txt/x"])
def test_unwritable_snapshot_prefix_fails_before_training(prefix, folder, messages):
    with pytest.raises(SolverError, match="cannot write snapshots with prefix"):
        make(solver_param(snapshot_prefix=prefix))
    assert not any("Creating training net" in m for m in messages)


def test_interrupted_snapshot_keeps_the_previous_one(folder, monkeypatch):
    solver = make(solver_param())
    solver.step(1)
    solver.snapshot()
    good = {n: open(f"snap/{n}", "rb").read() for n in os.listdir("snap")}
    solver.step(1)
    solver.iter = 1  # the same file names again, with other weights

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming it

    for fmt in ("BINARYPROTO", "HDF5"):
        solver.param.snapshot_format = caffe_pb2.SolverParameter.SnapshotFormat.Value(fmt)
        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", killed)
            with pytest.raises(KeyboardInterrupt):
                solver.snapshot()
        assert {n: open(f"snap/{n}", "rb").read() for n in os.listdir("snap")} == good


def test_requested_snapshot_and_stop(folder, messages):
    requests = iter([SNAPSHOT, "none", STOP])
    solver = make(solver_param(max_iter=10, test_iter=[], test_interval=0))
    solver.action_request = lambda: next(requests, "none")
    solver.solve()
    assert os.path.exists("snap/tiny_iter_1.caffemodel")
    assert solver.iter == 3 and os.path.exists("snap/tiny_iter_3.solverstate")  # stopping writes the final one
    assert messages[-1] == "Optimization stopped early."


def test_random_seed_fixes_the_initial_weights(folder):
    a, b, c = (make(solver_param(random_seed=s)) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert not np.array_equal(weights(a)[0], weights(c)[0])


def test_train_state_selects_layers(folder):
    extra = (
        'layer { name: "extra" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "extra" '
        'include { stage: "more" } }'
    )
    plain = make(solver_param(net=net_text(extra=extra)))
    staged = make(solver_param('train_state { stage: "more" }', net=net_text(extra=extra)))
    assert "extra" not in plain.net.layer_by_name and "extra" in staged.net.layer_by_name


def test_progress_bar_goes_to_stderr_only(folder, capsys, tmp_path):
    from pipeline.glog import setup_logging

    with kept_logger():
        setup_logging(tmp_path / "log.txt", stream=open(os.devnull, "w"))
        make(solver_param(), progress=True).step(3)
    err = capsys.readouterr().err
    assert "/3 [" in err and "it/s" in err and "Testing net" not in err
    assert "it/s]" not in (tmp_path / "log.txt").read_text()


def test_missing_net_file(folder):
    param = solver_param()
    param.ClearField("net_param")
    param.net = "nowhere.prototxt"
    with pytest.raises(SolverError, match="net file 'nowhere.prototxt' not found"):
        make(param)
