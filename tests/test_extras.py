"""The heavy optional dependencies (pyproject.toml's extras: onnx, plot, features, data) stay out of the core:
importing the package and its command line loads none of them, and a missing one is named with its extra."""

import subprocess
import sys

import pytest

from pipeline.errors import PipelineError
from pipeline.extras import MissingDependency, require

HEAVY = ("onnx", "onnxruntime", "matplotlib", "sklearn", "mlxtend")


def test_the_core_imports_no_extra():
    code = (
        "import sys, pipeline.cli, pipeline.net, pipeline.solvers, pipeline.export, pipeline.transfer, pipeline.viz\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(
        MissingDependency, match=r'ONNX export needs the onnx package .*pip install "caffe-pipeline\[onnx\]"'
    ):
        require("onnx", "onnx", "ONNX export")
    assert issubclass(MissingDependency, PipelineError)


def test_plotting_without_matplotlib_says_which_extra(monkeypatch, tmp_path):
    from pipeline.viz.plot import plot_logs

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    log = tmp_path / "x.log"
    log.write_text(
        "I0101 00:00:00.000000 1 solver.cpp:228] Iteration 0, loss = 2.3\n"
        "I0101 00:00:00.000000 1 solver.cpp:244]     Train net output #0: loss = 2.3 (* 1 = 2.3 loss)\n"
        "I0101 00:00:01.000000 1 solver.cpp:228] Iteration 10, loss = 1.3\n"
        "I0101 00:00:01.000000 1 solver.cpp:244]     Train net output #0: loss = 1.3 (* 1 = 1.3 loss)\n"
    )
    from pipeline.viz.parse_log import parse_log

    with pytest.raises(MissingDependency, match=r"caffe-pipeline\[plot\]"):
        plot_logs([parse_log(log)], tmp_path / "x.png")
