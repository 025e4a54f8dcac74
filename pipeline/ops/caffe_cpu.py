"""Caffe's CPU arithmetic as C++ ops (`pipeline/csrc/caffe_cpu.cpp`, `caffe_conv.cpp`; built and cached by
pipeline/ops/build.py at `make setup` or first use):

- `torch.ops.caffe_pipeline.softmax_label_loss`: SoftmaxWithLoss's common case, one fused op each way. Where
  the library cannot be built (no compiler) the layer falls back to its ATen formulation, once warned: same
  formula, rounding of its own.
- `torch.ops.caffe_pipeline.caffe_powx`: Caffe's caffe_powx, std::pow (libm powf) per element, which the
  adaptive solvers use for squares and square roots (powf(x, 0.5) is not always sqrtf(x)); for the bit-exact
  mode (pipeline/exact/caffe_blas.py).
- `torch.ops.caffe_pipeline.caffe_neuron` / `caffe_neuron_backward`: Sigmoid, TanH, BNLL, ELU, Exp, Log and Swish as
  Caffe's CPU code computes them (libm's float functions, its mix of float and double), for the bit-exact mode.
- `torch.ops.caffe_pipeline.caffe_im2col` / `caffe_col2im`: Caffe's im2col_cpu and col2im_cpu on one 2-D image,
  for the bit-exact mode's convolutions.
"""

from __future__ import annotations

import threading
import warnings

import torch

from pipeline.errors import PipelineError
from pipeline.ops.build import CAFFE_CPU, build_op_library

_lock = threading.Lock()
_state: dict[str, bool] = {}


def available() -> bool:
    """Whether the op is loaded (building it the first time); False, with one warning, where it cannot be."""
    ready = _state.get("ready")
    if ready is not None:
        return ready
    with _lock:
        if "ready" not in _state:
            try:
                # No fast-math here: the division and summation order are Caffe's arithmetic.
                build_op_library(CAFFE_CPU)
                _register_fake_kernels()
                _state["ready"] = True
            except PipelineError as exc:
                warnings.warn(f"{exc}; SoftmaxWithLoss runs as ATen ops instead (slower)", stacklevel=2)
                _state["ready"] = False
    return _state["ready"]


def _register_fake_kernels() -> None:
    @torch.library.register_fake("caffe_pipeline::caffe_powx")
    def _fake_powx(x, power):
        return torch.empty_like(x)

    @torch.library.register_fake("caffe_pipeline::caffe_im2col")
    def _fake_im2col(image, kernel, pad, stride, dilation):
        out = [
            (s + 2 * p - (d * (k - 1) + 1)) // st + 1
            for s, k, p, st, d in zip(image.shape[1:], kernel, pad, stride, dilation)
        ]
        return image.new_empty(image.shape[0] * kernel[0] * kernel[1], out[0] * out[1])

    @torch.library.register_fake("caffe_pipeline::caffe_col2im")
    def _fake_col2im(col, image_shape, kernel, pad, stride, dilation):
        return col.new_empty(image_shape)

    @torch.library.register_fake("caffe_pipeline::caffe_neuron")
    def _fake_neuron(x, kind, params):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("caffe_pipeline::caffe_neuron_backward")
    def _fake_neuron_backward(top_diff, x, y, kind, params):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

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


def caffe_powx(x: torch.Tensor, power: float) -> torch.Tensor:
    """Caffe's caffe_powx<float>: std::pow(x, power) element by element (a new tensor)."""
    return torch.ops.caffe_pipeline.caffe_powx(x, float(power))


class _CaffeNeuron(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind: str, params: list[float]):
        y = torch.ops.caffe_pipeline.caffe_neuron(x, kind, params)
        ctx.save_for_backward(x, y)
        ctx.kind, ctx.params = kind, params
        return y

    @staticmethod
    def backward(ctx, top_diff):
        x, y = ctx.saved_tensors
        return torch.ops.caffe_pipeline.caffe_neuron_backward(top_diff, x, y, ctx.kind, ctx.params), None, None


def caffe_neuron(x: torch.Tensor, kind: str, params=()) -> torch.Tensor:
    """The neuron layer `kind` (Sigmoid, TanH, BNLL, ELU, Exp, Log, Swish) forward and backward in Caffe's float
    arithmetic; `params` are the layer's float members (see pipeline/csrc/caffe_cpu.cpp)."""
    return _CaffeNeuron.apply(x, kind, [float(p) for p in params])


def exact_neuron(x: torch.Tensor) -> bool:
    """Whether a neuron layer should compute `x` as Caffe does: bit-exact mode on, float32 CPU, op built."""
    from pipeline.exact import caffe_blas

    return caffe_blas.active(x) and available()
