"""The default path's C++ op, `torch.ops.caffe_pipeline.softmax_label_loss`: SoftmaxWithLoss's common case, one
fused op each way (`pipeline/csrc/fast_ops.cpp`; built and cached by pipeline/ops/build.py at `make setup` or first
use). A library of its own, apart from the bit-exact mode's ops (pipeline/ops/caffe_cpu.py), so that a failed
exact build never disables it. Where it cannot be built (no compiler) the layer falls back to its ATen
formulation, once warned: same formula, rounding of its own.
"""

from __future__ import annotations

import torch

from pipeline.ops.build import FAST, load_optional

_state: dict[str, bool] = {}


def available() -> bool:
    """Whether the op is loaded (building it the first time); False, with one warning, where it cannot be."""
    return load_optional(_state, FAST, _register_fake_kernels, "SoftmaxWithLoss runs as ATen ops instead (slower)")


def _register_fake_kernels() -> None:
    @torch.library.register_fake("caffe_pipeline::softmax_label_loss")
    def _fake_forward(scores, labels, normalizer):
        return scores.new_empty(()), torch.empty_like(scores), labels.new_empty(scores.shape[0], dtype=torch.long)

    @torch.library.register_fake("caffe_pipeline::softmax_label_loss_backward")
    def _fake_backward(grad, prob, label, normalizer):
        return torch.empty_like(prob)


def softmax_label_loss(scores: torch.Tensor, labels: torch.Tensor, normalizer: float) -> torch.Tensor:
    """-sum(log(max(softmax(scores)[row, label], FLT_MIN))) / normalizer for (rows, classes) scores, one label
    per row (any dtype; float labels truncate like Caffe's int cast). Raises RuntimeError on a label out of range."""
    return torch.ops.caffe_pipeline.softmax_label_loss(scores, labels, float(normalizer))[0]
