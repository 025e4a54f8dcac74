"""`make train`'s default story (tools/teacher_student_story.py) runs end to end: data, teacher, student alone,
distilled student, the side-by-side accuracies and the agreement; tiny iteration counts, in a temporary folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli.tools import teacher_student_story as story

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("pipeline.ops.distill")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_story_end_to_end(tmp_path, capsys, one_thread):
    run, data = tmp_path / "runs" / "story", tmp_path / "data"
    argv = ["--run", str(run), "--data", str(data), "--teacher-iters", "8", "--student-iters", "8", "--threads", "1"]
    assert story.main(argv) == 0
    out = capsys.readouterr().out
    assert "4000 training and 1000 test images" in out
    table = re.findall(r"^  (teacher|student) .*?(\d\.\d{4})  \((\d+) errors", out, re.MULTILINE)
    assert [row[0] for row in table] == ["teacher", "student", "student"]
    assert "alone" in out and "distilled" in out and "agreement" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_images"] == 1000
    for key in ("teacher", "student", "distilled", "agreement_distilled", "agreement_student"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert [float(row[1]) for row in table] == [
        pytest.approx(summary[k], abs=1e-4) for k in ("teacher", "student", "distilled")
    ]
    for name in ("teacher", "student", "distilled"):
        log = (run / f"{name}.log").read_text()
        assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] Iteration 0", log, re.MULTILINE), name
        assert "Optimization Done." in log
        assert list((run / name).glob("*_iter_8.caffemodel")), name
        assert "<html" in (run / name / "report.html").read_text(), name
    distilled_log = (run / "distilled.log").read_text()
    assert "Copied 4 layers from" in distilled_log and "t_conv1" in distilled_log
    # Every step prints the command that repeats it, with the teacher loaded under the prefix.
    assert "--weights-map '*=t_*'" in out and "solvers/teacher_student_solver.prototxt" in out


def test_story_rejects_a_missing_data_dir(tmp_path, one_thread):
    from pipeline.errors import PipelineError

    with pytest.raises((PipelineError, SystemExit)):
        story.main(["--run", str(tmp_path / "r"), "--data", str(tmp_path / "d"), "--data-dir", str(tmp_path / "none")])


def test_story_flags_reach_the_runs(tmp_path, capsys, monkeypatch, one_thread):
    """--iters, --student-hidden, --temperature, --alpha reach the three solvers; --teacher-weights replaces the
    teacher's training by that caffemodel (scored, then distilled from); progress lines on a non-terminal."""
    import pipeline.solvers
    from pipeline.transfer.surgery import read_weights

    built = []
    real = pipeline.solvers.build_solver

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(pipeline.solvers, "build_solver", spy)
    run, data = tmp_path / "run", tmp_path / "data"
    common = ["--data", str(data), "--threads", "1", "--student-hidden", "12", "--temperature", "3", "--alpha", "0.25"]
    assert story.main(["--run", str(run), "--iters", "4", *common]) == 0
    captured = capsys.readouterr()
    teacher, student, distilled = built
    assert [s.iter for s in built] == [4, 4, 4]
    assert tuple(student.net.params["fc1"][0].data.shape) == (12, 784)
    assert tuple(distilled.net.params["fc1"][0].data.shape) == (12, 784)
    (kd,) = [layer for layer in distilled.net.layers if layer.type_name == "KnowledgeDistillation"]
    kd_param = kd.param.knowledge_distillation_param
    assert (kd_param.temperature, kd_param.alpha) == (3, 0.25)
    assert "alpha = 0.25" in captured.out and "T = 3" in captured.out
    # Not a terminal: one plain progress line per run at its end (iterations, speed, total time).
    for name in ("LeNet", "MLP-12", "teacher_student"):
        assert re.search(rf"^{name}: 4/4 it \(100%\), [\d.e+]+ it/s, done in \d+ s", captured.err, re.MULTILINE), name

    given = next((run / "teacher").glob("*_iter_4.caffemodel"))
    built.clear()
    again = tmp_path / "again"
    argv = ["--run", str(again), "--student-iters", "3", "--teacher-weights", str(given), "--no-progress", *common]
    assert story.main(argv) == 0
    captured = capsys.readouterr()
    teacher, student, distilled = built
    assert [s.iter for s in built] == [0, 3, 3]  # the teacher was loaded, not trained
    assert "scoring the teacher: LeNet from" in captured.out and "teacher: .venv" not in captured.out
    assert " it/s" not in captured.err
    first, second = (json.loads((r / "summary.json").read_text()) for r in (run, again))
    assert second["teacher"] == first["teacher"]
    loaded = read_weights(str(given))
    assert np.array_equal(distilled.net.params["t_conv1"][0].data.numpy(), loaded["conv1"][0])
    assert f"Copied 4 layers from {given}" in (again / "distilled.log").read_text()


def test_story_rejects_bad_flags(tmp_path):
    with pytest.raises(SystemExit):
        story.parse_args(["--teacher-weights", str(tmp_path / "missing.caffemodel")])
    with pytest.raises(SystemExit):
        story.parse_args(["--iters", "0"])
    args = story.parse_args(["--iters", "7", "--student-iters", "5"])
    assert (args.teacher_iters, args.student_iters) == (7, 5)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_train_passes_the_story_settings(tmp_path):
    """`make train HIDDEN=... TEMPERATURE=... ALPHA=... ITERS=... TEACHER_WEIGHTS=... OUT=...` becomes the story's
    flags (make -n: printed, not run); with none given the story runs with its defaults."""
    weights = tmp_path / "t.caffemodel"
    weights.write_bytes(b"")
    settings = ["HIDDEN=64", "TEMPERATURE=2", "ALPHA=0.5", "ITERS=300", f"TEACHER_WEIGHTS={weights}", "OUT=runs/x"]

    def story_argv(*variables):
        out = subprocess.run(
            ["make", "-n", "train", *variables], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        line = next(line for line in out.splitlines() if "teacher_student_story.py" in line)
        words = shlex.split(line.split("teacher_student_story.py", 1)[1].split(";", 1)[0])
        return words

    assert story_argv() == []
    args = story.parse_args(story_argv(*settings))
    assert (args.student_hidden, args.temperature, args.alpha) == ("64", 2.0, 0.5)
    assert (args.teacher_iters, args.student_iters, args.teacher_weights, args.run) == (
        300,
        300,
        str(weights),
        "runs/x",
    )
    args = story.parse_args(story_argv("TEACHER_ITERS=20", "STUDENT_ITERS=10"))
    assert (args.teacher_iters, args.student_iters) == (20, 10)


def test_busy_steps_report_elapsed_time_on_a_non_terminal(monkeypatch):
    """A step without iterations (the C++ op build, the data build): periodic 'still running' lines, then 'done'."""
    import io
    import time

    from pipeline.solvers.progress import busy

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with busy("compiling", "lines", every=0.01, delay=0.0):
        deadline = time.monotonic() + 30
        while "compiling: still running" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert re.search(r"^compiling: still running \(\d+ s\)$", err.getvalue(), re.MULTILINE)
    assert re.search(r"\ncompiling: done in \d+ s\n$", err.getvalue())
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    with busy("fast", "lines"):  # done before the one-second delay: says nothing
        pass
    with busy("off", False, delay=0.0):
        pass
    assert quiet.getvalue() == ""
