"""The `train` verb: Caffe's flags, the files it leaves beside the snapshots, resume, signals, bad input."""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest
from solver_util import kept_logger, net_text, tiny_folder

from pipeline.cli import main
from pipeline.cli.train import SignalActions
from pipeline.solvers.base import NONE, SNAPSHOT, STOP
from pipeline.weights.io import read_caffemodel

SOLVER = """net: "net.prototxt"
base_lr: {{ lr | default(0.05) }}
lr_policy: "fixed" momentum: 0.9 weight_decay: 0.001
max_iter: {{ iters | default(6) }} display: 2 test_iter: 3 test_interval: 3 snapshot: 3
snapshot_prefix: "snap/tiny" solver_mode: CPU random_seed: 1701
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    folder = tiny_folder(tmp_path, monkeypatch)
    (folder / "net.prototxt").write_text(net_text())
    (folder / "solver.prototxt").write_text(SOLVER)
    with kept_logger():
        yield folder


def train(*flags) -> int:
    return main(["train", "--solver", "solver.prototxt", *flags])


def test_train_writes_snapshots_log_and_rendered_prototxts(folder, capsys):
    assert train("--set", "lr=0.02") == 0
    names = sorted(os.listdir("snap"))
    for i in (3, 6):
        assert f"tiny_iter_{i}.caffemodel" in names and f"tiny_iter_{i}.solverstate" in names
    assert "base_lr: 0.02" in (folder / "snap/tiny_solver.prototxt").read_text()
    assert (folder / "snap/tiny_net.prototxt").read_text() == net_text()
    logs = [n for n in names if n.startswith("tiny_train_") and n.endswith(".log")]
    assert len(logs) == 1
    text = (folder / "snap" / logs[0]).read_text()
    assert "Iteration 6, Testing net (#0)" in text and "Optimization Done." in text
    out = capsys.readouterr().out
    assert f"log: snap/{logs[0]}" in out and "snapshot: snap/tiny_iter_6.solverstate" in out
    assert "test net #0 at iteration 6: loss = " in out


def test_resume_continues_the_same_trajectory(folder):
    assert train("--set", "iters=6") == 0
    straight = read_caffemodel("snap/tiny_iter_6.caffemodel")
    os.remove("snap/tiny_iter_6.caffemodel")
    assert train("--set", "iters=6", "--snapshot", "snap/tiny_iter_3.solverstate") == 0
    resumed = read_caffemodel("snap/tiny_iter_6.caffemodel")
    # Bit for bit: both runs are in this process (same threads, same shapes, so the same kernels).
    for a, b in zip(straight.layer, resumed.layer):
        for x, y in zip(a.blobs, b.blobs):
            assert np.array_equal(np.array(x.data), np.array(y.data))


def test_weights_fine_tune(folder, capsys):
    assert train("--set", "iters=3") == 0
    assert train("--set", "iters=1", "--weights", "snap/tiny_iter_3.caffemodel") == 0
    err = capsys.readouterr().err
    assert "Finetuning from snap/tiny_iter_3.caffemodel" in err and "Copied 1 layers" in err


def test_snapshot_and_weights_together_is_an_error(folder, capsys):
    assert train("--snapshot", "a.solverstate", "--weights", "b.caffemodel") == 1
    assert "not both" in capsys.readouterr().err


def test_missing_net_file(folder, capsys):
    (folder / "solver.prototxt").write_text(SOLVER.replace("net.prototxt", "missing.prototxt"))
    assert train() == 1
    assert "net file 'missing.prototxt' not found" in capsys.readouterr().err


def test_missing_snapshot_directory_is_created(folder):
    (folder / "solver.prototxt").write_text(SOLVER.replace("snap/tiny", "new/dir/tiny"))
    assert train() == 0
    assert any(n.endswith(".caffemodel") for n in os.listdir(folder / "new" / "dir"))


def test_unwritable_snapshot_directory_fails_first(folder, capsys):
    (folder / "blocker").write_text("a file where the snapshot folder should be")
    (folder / "solver.prototxt").write_text(SOLVER.replace("snap/tiny", "blocker/tiny"))
    assert train() == 1
    assert "cannot write snapshots with prefix 'blocker/tiny'" in capsys.readouterr().err


def test_nan_loss_is_reported_and_logged(folder, capsys):
    assert train("--set", "lr=1e30") == 1
    err = capsys.readouterr().err
    assert "error: Iteration" in err and "the loss is" in err
    log = next(n for n in os.listdir("snap") if n.endswith(".log"))
    assert "the loss is" in (folder / "snap" / log).read_text()


def test_signal_actions_follow_caffes_flags():
    actions = SignalActions("stop", "snapshot")
    assert actions() == NONE
    actions._handle(signal.SIGHUP, None)
    assert actions() == SNAPSHOT and actions() == NONE
    actions._handle(signal.SIGINT, None)
    assert actions() == STOP
    with pytest.raises(KeyboardInterrupt):
        actions._handle(signal.SIGINT, None)  # a second Ctrl-C aborts at once
    quiet = SignalActions("none", "none")
    quiet._handle(signal.SIGINT, None)
    assert quiet() == NONE


def test_sighup_snapshots_and_goes_on(folder, monkeypatch):
    """A real SIGHUP sent during training: a snapshot at that iteration, and training runs to the end."""
    from pipeline.solvers.sgd import SGDSolver

    original = SGDSolver.apply_update

    def hup_at_2(self):
        original(self)
        if self.iter == 1:
            os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(SGDSolver, "apply_update", hup_at_2)
    assert train("--set", "iters=4") == 0
    names = os.listdir("snap")
    assert "tiny_iter_2.caffemodel" in names and "tiny_iter_4.caffemodel" in names


# ----- --set: a template variable first, else the SolverParameter field of that name, else an error -------------
PLAIN = SOLVER.replace("{{ lr | default(0.05) }}", "0.05").replace("{{ iters | default(6) }}", "6")


def _log_text(folder) -> str:
    return (folder / "snap" / next(n for n in os.listdir(folder / "snap") if n.endswith(".log"))).read_text()


def test_set_overrides_the_fields_of_a_plain_solver(folder, capsys):
    """A plain Caffe solver reads no variables: `--set max_iter=2` sets the field (logged, Caffe-style, in the
    run's log file too), as do repeated and enum fields; the saved solver shows the values used."""
    (folder / "solver.prototxt").write_text(PLAIN)
    flags = ["max_iter=2", "snapshot=1", "test_iter=[1]", "test_interval=2", "solver_mode=cpu", "base_lr=1e-3"]
    assert train(*[x for flag in flags for x in ("--set", flag)]) == 0
    names = os.listdir("snap")
    assert "tiny_iter_1.caffemodel" in names and "tiny_iter_2.caffemodel" in names
    assert not any(n.startswith("tiny_iter_3") or n.startswith("tiny_iter_6") for n in names)
    log = _log_text(folder)
    for line in ("Setting max_iter = 2 from --set", "Setting test_iter = 1 from --set", "solver_mode = CPU"):
        assert line in log
    saved = (folder / "snap/tiny_solver.prototxt").read_text()
    assert "max_iter: 2" in saved and "base_lr: 0.001" in saved and saved.startswith("# solver.prototxt rendered")
    assert "Iteration 2, Testing net" in log


def test_unused_set_is_an_error_with_a_suggestion(folder, capsys):
    assert train("--set", "max_itr=2") == 1
    err = capsys.readouterr().err
    assert "unused --set 'max_itr' (did you mean 'max_iter'?)" in err
    assert "solver.prototxt, net.prototxt nor a SolverParameter field" in err and "(they read: iters, lr)" in err
    assert train("--set", "iter=2") == 1
    assert "(did you mean 'iters'?)" in capsys.readouterr().err
    assert not list((folder / "snap").glob("*.log"))  # nothing ran


def test_a_net_template_variable_wins_over_the_solver_field(folder, capsys):
    (folder / "net.prototxt").write_text(net_text() + "{% if momentum is defined %}# m{{ momentum }}{% endif %}\n")
    assert train("--set", "momentum=0.5", "--set", "iters=1") == 0
    assert "Setting momentum" not in capsys.readouterr().err
    assert "momentum: 0.9" in (folder / "snap/tiny_solver.prototxt").read_text()
    assert "# m0.5" in (folder / "snap/tiny_net.prototxt").read_text()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("max_iter=abc", "max_iter takes a number"),
        ("max_iter=2.5", "max_iter takes an integer"),
        ("solver_mode=TPU", "solver_mode takes one of CPU, GPU"),
        ("debug_info=yes", "debug_info takes true or false"),
    ],
)
def test_bad_field_values_are_clear_errors(folder, capsys, flag, message):
    (folder / "solver.prototxt").write_text(PLAIN)
    assert train("--set", flag) == 1
    assert message in capsys.readouterr().err


# ----- a failed run's log ends with the failure, as a glog F line ------------------------------------------------
def test_a_failed_run_ends_its_log_with_an_f_line(folder, capsys):
    import re

    (folder / "net.prototxt").write_text(net_text() + 'layer { name: "bad" type: "Nope" bottom: "data" top: "b" }\n')
    assert train() == 1
    err = capsys.readouterr().err
    last = _log_text(folder).splitlines()[-1]
    assert re.match(r"F\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+\.py:\d+\] ", last), last
    assert "Nope" in last and "Nope" in err
    assert not [line for line in err.splitlines() if line.startswith("F")]  # on the terminal once: "error: ..."


def test_nan_loss_failure_is_the_logs_f_line(folder, capsys):
    assert train("--set", "lr=1e30") == 1
    last = _log_text(folder).splitlines()[-1]
    assert last.startswith("F") and "the loss is" in last


# ----- Caffe's single-dash flags, and the device ------------------------------------------------------------------
def test_caffe_single_dash_flags_train(folder, capsys):
    assert main(["train", "-solver", "solver.prototxt", "-set=iters=1", "-sighup_effect", "none"]) == 0
    assert "tiny_iter_1.caffemodel" in os.listdir("snap")


def test_solver_mode_gpu_without_cuda_runs_on_the_cpu_and_says_so(folder, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train("--set", "iters=1", "--set", "solver_mode=GPU") == 0
    err = capsys.readouterr().err
    assert "solver_mode is GPU but no CUDA device is available: running on the CPU" in err
    assert "Use GPU" not in err
    assert _log_text(folder).count("solver_mode is GPU but no CUDA device") == 1
    shutil.rmtree(folder / "snap")
    assert train("--gpu", "0") == 1
    err = capsys.readouterr().err
    assert "--gpu 0 asked for, but no CUDA device is available here" in err and "leave out --gpu" in err
