"""Caffe's CPU arithmetic as C++ ops for the bit-exact mode (pipeline/exact/caffe_blas.py), `csrc/caffe_cpu.cpp`
and `caffe_conv.cpp`, built and cached by pipeline/ops/build.py at `make setup` or first use. The default path's
fused SoftmaxWithLoss op is a library of its own (pipeline/ops/fast_ops.py): a failed build here costs it nothing.

- `torch.ops.caffe_pipeline.caffe_powx`: Caffe's caffe_powx, std::pow (libm powf) per element, which the
  adaptive solvers use for squares and square roots (powf(x, 0.5) is not always sqrtf(x)).
- `torch.ops.caffe_pipeline.caffe_neuron` / `caffe_neuron_backward`: Sigmoid, TanH, BNLL, ELU, Exp, Log and Swish as
  Caffe's CPU code computes them (libm's float functions, its mix of float and double).
- `torch.ops.caffe_pipeline.caffe_im2col` / `caffe_col2im`: Caffe's im2col_cpu and col2im_cpu on one 2-D image,
  for the bit-exact mode's convolutions.
"""

from __future__ import annotations

import torch

from pipeline.exact import caffe_blas
from pipeline.ops.build import CAFFE_CPU, load_optional

_state: dict[str, bool] = {}


def available() -> bool:
    """Whether the ops are loaded (building them the first time); False, with one warning, where they cannot be."""
    fallback = "the bit-exact mode computes without Caffe's libm arithmetic"
    return load_optional(_state, CAFFE_CPU, _register_fake_kernels, fallback)


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
    return caffe_blas.active(x) and available()
