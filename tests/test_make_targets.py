"""The Makefile's run targets pass what users type through to the command line intact: `make train SET=...`
quotes each --set (JSON-ish values keep their quotes), `make time` runs the `time` verb. Make runs with a stand-in
python that records its arguments, so nothing is installed or trained."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.text.template import parse_assignments

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def run_make(tmp_path: Path, *args: str) -> list[list[str]]:
    """Run `make ARGS` with PY a script that records each call's arguments; return the calls."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls.txt"
    fake = venv / "bin" / "python"
    fake.write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> "{calls}"\necho "--end--" >> "{calls}"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    stamp = venv / ".installed"
    stamp.touch()  # newer than pyproject.toml: no set-up runs
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(
        ["make", "-s", "-C", str(ROOT), *args, f"VENV={venv}", f"PY={fake}", f"STAMP={stamp}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = calls.read_text() if calls.exists() else ""
    return [block.strip("\n").split("\n") for block in text.split("--end--\n") if block.strip("\n")]


def test_make_train_quotes_each_set(tmp_path):
    value = 'student_vars={"hidden":[64]}'
    calls = run_make(tmp_path, "train", "SOLVER=solvers/teacher_student_solver.prototxt", f"SET={value} max_iter=3")
    train = next(call for call in calls if call[:2] == ["-m", "pipeline"])
    assert train[2:5] == ["train", "--solver", "solvers/teacher_student_solver.prototxt"]
    sets = [train[i + 1] for i, a in enumerate(train) if a == "--set"]
    assert sets == [value, "max_iter=3"]
    assert parse_assignments(sets) == {"student_vars": {"hidden": [64]}, "max_iter": 3}


def test_make_time_runs_the_time_verb(tmp_path):
    calls = run_make(tmp_path, "time", "MODEL=prototxt/lenet.prototxt", "ITERS=2", "SET=batch=8")
    time = next(call for call in calls if call[:2] == ["-m", "pipeline"])
    assert time == [
        "-m",
        "pipeline",
        "time",
        "--model",
        "prototxt/lenet.prototxt",
        "--iterations",
        "2",
        "--set",
        "batch=8",
    ]


def test_python_m_pipeline_time_runs():
    """What `make time` runs, for real (`-m pipeline.cli` has no __main__)."""
    command = [sys.executable, "-m", "pipeline", "time", "--model", "prototxt/lenet.prototxt", "--set", "data=dummy"]
    result = subprocess.run(
        [*command, "--set", "batch=2", "--iterations", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "Average Forward-Backward:" in result.stderr
