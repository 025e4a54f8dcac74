"""Scale and Bias as ScaleLayer<float> / BiasLayer<float>'s CPU code computes them, for the bit-exact mode
(pipeline/exact/caffe_blas.py).

The forward products and sums round once per element whichever way they are computed; the parameter diffs are
sums, which Caffe takes with OpenBLAS (sgemv against a vector of ones, or sdot), per outer slice and then across
slices, sometimes adding to the diff already there (a learned blob), sometimes overwriting it (as Caffe does).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.exact.caffe_blas import dot, gemv
from pipeline.net.layers.caffe_gemm import diff_buffer, store_diff


def _dims(x: torch.Tensor, axis: int, operand: torch.Tensor) -> tuple[int, int, int]:
    """outer_dim, operand_dim, inner_dim of Caffe's layers."""
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return outer, operand.numel(), int(np.prod(x.shape[axis + operand.dim() :], dtype=np.int64))


class CaffeBias(torch.autograd.Function):
    """BiasLayer: y = x + b; b's diff summed per outer slice with sgemv, accumulating from the first slice on for a
    learned blob, from the second for a bottom."""

    @staticmethod
    def forward(ctx, x, bias, axis: int, learned: bool):
        ctx.params, ctx.axis, ctx.learned = (bias,), axis, learned
        return x + bias.reshape(tuple(bias.shape) + (1,) * (x.dim() - axis - bias.dim()))

    @staticmethod
    def backward(ctx, top_diff):
        (bias,) = ctx.params
        grad_bias = None
        if ctx.needs_input_grad[1]:
            top_diff = top_diff.contiguous()
            outer, bias_dim, inner = _dims(top_diff, ctx.axis, bias)
            buffer = diff_buffer(bias, True) if ctx.learned else bias.new_zeros(bias.shape)
            ones = top_diff.new_ones(inner)
            for n in range(outer):
                beta = 1.0 if ctx.learned or n > 0 else 0.0
                gemv(False, bias_dim, inner, 1.0, (top_diff, n * bias_dim * inner), (ones, 0), beta, (buffer, 0))
            grad_bias = store_diff(bias, buffer) if ctx.learned else buffer
        return top_diff if ctx.needs_input_grad[0] else None, grad_bias, None, None


class CaffeScale(torch.autograd.Function):
    """ScaleLayer without its bias: y = x * s; s's diff as ScaleLayer::Backward_cpu sums it."""

    @staticmethod
    def forward(ctx, x, scale, axis: int, learned: bool):
        ctx.params, ctx.axis, ctx.learned = (scale,), axis, learned
        ctx.save_for_backward(x, scale)
        return x * scale.reshape(tuple(scale.shape) + (1,) * (x.dim() - axis - scale.dim()))

    @staticmethod
    def backward(ctx, top_diff):
        x, scale = ctx.saved_tensors
        top_diff = top_diff.contiguous()
        outer, scale_dim, inner = _dims(x, ctx.axis, scale)
        grad_x = grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = _scale_diff(ctx, top_diff, x.contiguous(), scale, outer, scale_dim, inner)
        if ctx.needs_input_grad[0]:
            grad_x = top_diff * scale.reshape(tuple(scale.shape) + (1,) * (x.dim() - ctx.axis - scale.dim()))
        return grad_x, grad_scale, None, None


def _scale_diff(ctx, top_diff, x, scale, outer: int, scale_dim: int, inner: int):
    learned = ctx.learned
    diff = diff_buffer(scale, True) if learned else scale.new_zeros(scale.shape)
    flat = diff.view(-1)
    product = (top_diff * x).view(-1)
    if x.numel() == scale.numel():
        flat.copy_(product)  # the element-wise case: the product is the diff, written over it
    else:
        ones = product.new_ones(max(inner, outer))
        if inner == 1:
            sums = product
        elif outer * scale_dim == 1:
            result = np.float32(dot(product, ones[:inner]))
            flat[0] = float(np.float32(flat[0].item()) + result) if learned else float(result)
            sums = None
        else:
            sums = flat if outer == 1 else product.new_empty(outer * scale_dim)
            gemv(False, outer * scale_dim, inner, 1.0, (product, 0), (ones, 0), 0.0, (sums, 0))
        if outer != 1 and sums is not None:
            if scale_dim == 1:
                result = np.float32(dot(ones[:outer], sums))
                flat[0] = float(np.float32(flat[0].item()) + result) if learned else float(result)
            else:
                gemv(True, outer, scale_dim, 1.0, (sums, 0), (ones, 0), 1.0 if learned else 0.0, (flat, 0))
    return store_diff(scale, diff) if learned else diff
