"""`make train`'s default story (tools/teacher_student_story.py) runs end to end: data, teacher, student alone,
distilled student, the side-by-side accuracies and the agreement; tiny iteration counts, in a temporary folder."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import teacher_student_story as story  # noqa: E402

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
