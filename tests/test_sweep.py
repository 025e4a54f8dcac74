"""Sweeps (pipeline/sweep/run.py, tools/sweep.py): grid parsing, the solver checks, and a real 2x1 sweep of a tiny
DummyData net trained by `python -m pipeline train` subprocesses, compared in one table and one plot."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sweep.run import SweepError, check_solver, main, parse_grid, plan, run_name, split_values

ROOT = Path(__file__).resolve().parent.parent
NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 16 dim: 8 } shape { dim: 16 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 2.99 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: {{ outputs | default(3) }} weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
SOLVER = """net: "{net}"
test_iter: 2
test_interval: 3
base_lr: {{{{ base_lr | default(0.1) }}}}
momentum: {{{{ momentum | default(0.0) }}}}
lr_policy: "fixed"
display: 1
max_iter: {{{{ max_iter | default(6) }}}}
snapshot_prefix: "{prefix}/tiny"
random_seed: 1
"""


@pytest.fixture
def solver(tmp_path) -> Path:
    net = tmp_path / "tiny_net.prototxt"
    net.write_text(NET)
    path = tmp_path / "tiny_solver.prototxt"
    path.write_text(SOLVER.format(net=net, prefix="{{ run }}"))
    return path


def test_split_values_keeps_brackets_and_quotes():
    assert split_values("1,2,4") == ["1", "2", "4"]
    assert split_values("[800,800], [100]") == ["[800,800]", "[100]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "at least one --grid"),
        (["alpha"], "name=v1,v2"),
        (["1x=1,2"], "name=v1,v2"),
        (["alpha=0.5,"], "empty value"),
        (["alpha=1,1"], "repeated"),
        (["alpha=1", "alpha=2"], "twice"),
    ],
)
def test_bad_grids_are_refused(items, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(items)


def test_plan_is_the_product_in_order(tmp_path):
    grid = parse_grid(["temperature=1,2,4", "alpha=0.5,0.9"])
    runs = plan(grid, tmp_path)
    assert [r.values for r in runs][:3] == [
        {"temperature": "1", "alpha": "0.5"},
        {"temperature": "1", "alpha": "0.9"},
        {"temperature": "2", "alpha": "0.5"},
    ]
    assert len(runs) == 6 and len({r.folder for r in runs}) == 6
    assert runs[0].name == "temperature-1_alpha-0.5" and runs[0].folder == tmp_path / runs[0].name
    assert run_name({"hidden": "[800, 800]"}) == "hidden-800800"


def test_solver_must_keep_runs_apart(tmp_path, solver):
    fixed_prefix = tmp_path / "fixed_solver.prototxt"
    fixed_prefix.write_text(SOLVER.format(net=tmp_path / "tiny_net.prototxt", prefix=tmp_path))
    with pytest.raises(SweepError, match="does not use the variable 'run'.*--run-var"):
        check_solver(str(fixed_prefix), {"base_lr": ["0.1", "0.2"]}, {}, "run")
    assert check_solver(str(solver), {"base_lr": ["0.1", "0.2"], "outputs": ["3", "4"]}, {}, "run") == []
    with pytest.raises(SweepError, match="unused --set 'bse_lr' \\(did you mean 'base_lr'\\?\\)"):
        check_solver(str(solver), {"bse_lr": ["0.1", "0.2"]}, {}, "run")
    # A variable that no template reads but names a SolverParameter field sets it (as train's --set does).
    assert check_solver(str(solver), {"weight_decay": ["0", "0.1"]}, {}, "run") == []
    # One that a template reads, but to no effect, is reported.
    quiet = tmp_path / "quiet_solver.prototxt"
    quiet.write_text(solver.read_text() + "{% if spare is defined %}{% endif %}\n")
    warnings = check_solver(str(quiet), {"spare": ["1", "2"]}, {}, "run")
    assert warnings and "spare" in warnings[0] and "same solver and nets" in warnings[0]


def test_sweep_over_a_2x1_grid(tmp_path, solver, capsys):
    out = tmp_path / "sweep"
    argv = ["--solver", str(solver), "--grid", "base_lr=0.1,0.02", "--grid", "momentum=0.9", "--out", str(out)]
    status = main(argv + ["--jobs", "2", "--set", "max_iter=6"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["base_lr"], r["momentum"], r["status"]) for r in rows] == [("0.1", "0.9", "ok"), ("0.02", "0.9", "ok")]
    for row in rows:
        folder = Path(row["folder"])
        assert folder.parent == out
        assert row["iterations"] == "6" and row["tested at"] == "6"
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and float(row["loss"]) > 0 and float(row["seconds"]) > 0
        assert (folder / "tiny_iter_6.caffemodel").exists() and list(folder.glob("tiny_train_*.log"))
        solver_text = (folder / "tiny_solver.prototxt").read_text()
        assert f"base_lr: {row['base_lr']}" in solver_text and "momentum: 0.9" in solver_text
    assert rows[0]["loss"] != rows[1]["loss"]  # the runs really differ
    markdown = (out / "sweep.md").read_text()
    assert markdown.startswith("| base_lr | momentum | status |") and markdown.count("| ok |") == 2
    assert markdown in printed.out
    for image in ("sweep.png", "sweep.svg"):
        assert (out / image).stat().st_size > 1000
    # --no-train: the same table again, from the runs' logs alone
    (out / "sweep.csv").unlink()
    assert main(argv + ["--no-train"]) == 0
    assert list(csv.DictReader((out / "sweep.csv").open())) == rows


def test_a_failed_run_is_a_row_and_exit_1(tmp_path, solver, capsys):
    out = tmp_path / "sweep"
    status = main(["--solver", str(solver), "--grid", "max_iter=-1", "--out", str(out)])
    assert status == 1
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert rows[0]["status"].startswith("failed (exit")
    assert "max_iter must not be negative" in (out / "sweep.md").read_text()


def test_tool_usage_errors_exit_2(tmp_path, solver):
    tool = [sys.executable, str(ROOT / "tools" / "sweep.py"), "--solver", str(solver), "--out", str(tmp_path / "x")]
    proc = subprocess.run(tool + ["--grid", "run=a,b"], capture_output=True, text=True)
    assert proc.returncode == 2 and "given twice" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(tool + ["--grid", "base_lr"], capture_output=True, text=True)
    assert proc.returncode == 2 and "name=v1,v2" in proc.stderr
