"""InnerProduct, Convolution (any number of spatial axes) and Deconvolution as Caffe's CPU code computes them,
call for call (see pipeline/exact/caffe_blas.py): used by those layers while exact Caffe BLAS is on.

Each function mirrors the Caffe source it names: the same BLAS calls with the same shapes, transposes, alphas
and betas, the same loop over images and groups (2-D Convolution's in C++, pipeline/csrc/caffe_conv.cpp),
Caffe's im2col/col2im (pipeline/net/layers/caffe_im2col.py), and the same accumulation order of gradients.
"""

from __future__ import annotations

import math

import torch

from pipeline.exact.caffe_blas import address, gemm, gemv
from pipeline.net.layers.caffe_im2col import col2im, im2col, output_shape
from pipeline.ops import caffe_cpu


def diff_buffer(param: torch.Tensor | None, needed: bool) -> torch.Tensor | None:
    """Where a parameter gradient accumulates, as in Caffe, whose layers add into the blob's diff (gemm and gemv
    with beta 1) on top of what earlier sub-batches (iter_size) or weight-sharing layers left there: the
    parameter's own .grad when it is a leaf (in Caffe's row-major order), else a zero buffer. Adding a separately
    summed gradient afterwards, as autograd would, rounds differently."""
    if param is None or not needed:
        return None
    if param.is_leaf and param.grad is not None:
        return param.grad.contiguous()
    return torch.zeros(param.shape, dtype=param.dtype, device=param.device)


def store_diff(param: torch.Tensor | None, diff: torch.Tensor | None) -> torch.Tensor | None:
    """Puts an accumulated leaf gradient in place (returns None: autograd must not add it again); returns the
    gradient itself for a non-leaf parameter, which autograd passes on."""
    if diff is None or not param.is_leaf:
        return diff
    if param.grad is None:
        param.grad = diff
    elif param.grad.data_ptr() != diff.data_ptr():
        param.grad.copy_(diff)
    return None


def backward_cpu_bias(grad_b: torch.Tensor, top_diff: torch.Tensor, num: int, channels: int, spatial: int) -> None:
    """BaseConvolutionLayer::backward_cpu_bias for each image: its top diff (channels x spatial) times ones,
    added to the bias diff by one sgemv."""
    ones = top_diff.new_ones(spatial)
    for i in range(num):
        gemv(False, channels, spatial, 1.0, (top_diff, i * channels * spatial), (ones, 0), 1.0, (grad_b, 0))


class InnerProductGemm(torch.autograd.Function):
    """InnerProductLayer<float>::Forward_cpu / Backward_cpu; x is (M, K), weight (N, K), or (K, N) transposed."""

    @staticmethod
    def forward(ctx, x, weight, bias, transpose: bool):
        ctx.params = (weight, bias)
        x, weight = x.contiguous(), weight.contiguous()
        m, k = x.shape
        n = weight.shape[1] if transpose else weight.shape[0]
        top = x.new_empty(m, n)
        gemm(False, not transpose, m, n, k, 1.0, (x, 0), (weight, 0), 0.0, (top, 0))
        if bias is not None:
            gemm(False, False, m, n, 1, 1.0, (x.new_ones(m), 0), (bias.contiguous(), 0), 1.0, (top, 0))
        ctx.save_for_backward(x, weight, bias)
        ctx.transpose = transpose
        return top

    @staticmethod
    def backward(ctx, top_diff):
        x, weight, bias = ctx.saved_tensors
        top_diff = top_diff.contiguous()
        m, k = x.shape
        n = top_diff.shape[1]
        grad_x = None
        grad_w = diff_buffer(ctx.params[0], ctx.needs_input_grad[1])
        grad_b = diff_buffer(ctx.params[1], ctx.needs_input_grad[2])
        if grad_w is not None:
            if ctx.transpose:
                gemm(True, False, k, n, m, 1.0, (x, 0), (top_diff, 0), 1.0, (grad_w, 0))
            else:
                gemm(True, False, n, k, m, 1.0, (top_diff, 0), (x, 0), 1.0, (grad_w, 0))
        if grad_b is not None:
            gemv(True, m, n, 1.0, (top_diff, 0), (x.new_ones(m), 0), 1.0, (grad_b, 0))
        if ctx.needs_input_grad[0]:
            grad_x = x.new_empty(m, k)
            gemm(False, ctx.transpose, m, k, n, 1.0, (top_diff, 0), (weight, 0), 0.0, (grad_x, 0))
        return grad_x, store_diff(ctx.params[0], grad_w), store_diff(ctx.params[1], grad_b), None


class ConvolutionGemm(torch.autograd.Function):
    """ConvolutionLayer<float> (BaseConvolutionLayer's forward_cpu_gemm, forward_cpu_bias, backward_cpu_bias,
    weight_cpu_gemm, backward_cpu_gemm) for (N, C, *spatial), any number of spatial axes."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, pad, dilation, group: int):
        ctx.params = (weight, bias)
        x, weight = x.contiguous(), weight.contiguous()
        ctx.in_cpp = x.dim() == 4 and caffe_cpu.available()
        if ctx.in_cpp:  # the same loop in C++
            ctx.save_for_backward(x, weight)
            ctx.geometry, ctx.group = (list(pad), list(stride), list(dilation)), group
            return torch.ops.caffe_pipeline.caffe_conv2d_forward(
                x, weight, bias, *ctx.geometry, group, address("cblas_sgemm")
            )
        num = x.shape[0]
        out_channels, kernel = weight.shape[0], tuple(weight.shape[2:])
        geometry = (kernel, tuple(stride), tuple(pad), tuple(dilation))
        out = output_shape(x.shape[2:], *geometry)
        spatial = math.prod(out)
        kernel_dim = weight[0].numel()
        top = x.new_empty(num, out_channels, *out)
        ones = x.new_ones(spatial)
        bias = bias.contiguous() if bias is not None else None
        m = out_channels // group
        for i in range(num):
            col = im2col(x[i], *geometry)
            for g in range(group):
                gemm(
                    False, False, m, spatial, kernel_dim, 1.0, (weight, g * m * kernel_dim),
                    (col, g * kernel_dim * spatial), 0.0, (top, i * out_channels * spatial + g * m * spatial),
                )  # fmt: skip
            if bias is not None:
                gemm(
                    False, False, out_channels, spatial, 1, 1.0, (bias, 0), (ones, 0), 1.0,
                    (top, i * out_channels * spatial),
                )  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.group, ctx.spatial = geometry, group, spatial
        return top

    @staticmethod
    def backward(ctx, top_diff):
        x, weight = ctx.saved_tensors
        top_diff = top_diff.contiguous()
        if ctx.in_cpp:
            grad_x, grad_w, grad_b = torch.ops.caffe_pipeline.caffe_conv2d_backward(
                top_diff, x, weight, diff_buffer(ctx.params[0], ctx.needs_input_grad[1]),
                diff_buffer(ctx.params[1], ctx.needs_input_grad[2]), ctx.needs_input_grad[0], *ctx.geometry,
                ctx.group, address("cblas_sgemm"), address("cblas_sgemv"),
            )  # fmt: skip
            grad_w = store_diff(ctx.params[0], grad_w) if ctx.needs_input_grad[1] else None
            grad_b = store_diff(ctx.params[1], grad_b) if ctx.needs_input_grad[2] else None
            return grad_x if ctx.needs_input_grad[0] else None, grad_w, grad_b, None, None, None, None
        geometry, group, spatial = ctx.geometry, ctx.group, ctx.spatial
        num = x.shape[0]
        out_channels = weight.shape[0]
        kernel_dim = weight[0].numel()
        m = out_channels // group
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = diff_buffer(ctx.params[0], ctx.needs_input_grad[1])
        grad_b = diff_buffer(ctx.params[1], ctx.needs_input_grad[2])
        if grad_b is not None:
            backward_cpu_bias(grad_b, top_diff, num, out_channels, spatial)
        col_diff = x.new_empty(x.shape[1] * math.prod(geometry[0]), spatial)
        for i in range(num):
            top_offset = i * out_channels * spatial
            if grad_w is not None:
                col = im2col(x[i], *geometry)
                for g in range(group):
                    gemm(
                        False, True, m, kernel_dim, spatial, 1.0, (top_diff, top_offset + g * m * spatial),
                        (col, g * kernel_dim * spatial), 1.0, (grad_w, g * m * kernel_dim),
                    )  # fmt: skip
            if grad_x is not None:
                for g in range(group):
                    gemm(
                        True, False, kernel_dim, spatial, m, 1.0, (weight, g * m * kernel_dim),
                        (top_diff, top_offset + g * m * spatial), 0.0, (col_diff, g * kernel_dim * spatial),
                    )  # fmt: skip
                grad_x[i] = col2im(col_diff, x.shape[1:], *geometry)
        return grad_x, store_diff(ctx.params[0], grad_w), store_diff(ctx.params[1], grad_b), None, None, None, None


class DeconvolutionGemm(torch.autograd.Function):
    """DeconvolutionLayer<float> for 2-D (N, C, H, W): the convolution's data gradient as its forward. In Caffe's
    reversed terms the convolution maps the top (its "input", im2col'ed) to the bottom (its "output"); the weight
    (bottom channels, num_output / group, kh, kw) is that convolution's."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, pad, dilation, group: int, out_hw):
        ctx.params = (weight, bias)
        x, weight = x.contiguous(), weight.contiguous()
        num, channels, height, width = x.shape
        _, out_per_group, kh, kw = weight.shape
        num_output = out_per_group * group
        geometry = ((kh, kw), tuple(stride), tuple(pad), tuple(dilation))
        spatial = height * width  # conv_out_spatial_dim_: the bottom's
        top_spatial = out_hw[0] * out_hw[1]
        kernel_dim = out_per_group * kh * kw
        m = channels // group  # conv_out_channels_ / group
        top = x.new_empty(num, num_output, *out_hw)
        col = x.new_empty(num_output * kh * kw, spatial)
        ones = x.new_ones(top_spatial)
        for i in range(num):  # backward_cpu_gemm, then forward_cpu_bias
            for g in range(group):
                gemm(
                    True, False, kernel_dim, spatial, m, 1.0, (weight, g * m * kernel_dim),
                    (x, i * channels * spatial + g * m * spatial), 0.0, (col, g * kernel_dim * spatial),
                )  # fmt: skip
            top[i] = col2im(col, (num_output, *out_hw), *geometry)
            if bias is not None:
                gemm(
                    False, False, num_output, top_spatial, 1, 1.0, (bias.contiguous(), 0), (ones, 0), 1.0,
                    (top, i * num_output * top_spatial),
                )  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.group = geometry, group
        return top

    @staticmethod
    def backward(ctx, top_diff):
        x, weight = ctx.saved_tensors
        top_diff = top_diff.contiguous()
        geometry, group = ctx.geometry, ctx.group
        num, channels, height, width = x.shape
        spatial = height * width
        _, out_per_group, kh, kw = weight.shape
        num_output = out_per_group * group
        top_spatial = top_diff.shape[2] * top_diff.shape[3]
        kernel_dim = out_per_group * kh * kw
        m = channels // group
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = diff_buffer(ctx.params[0], ctx.needs_input_grad[1])
        grad_b = diff_buffer(ctx.params[1], ctx.needs_input_grad[2])
        if grad_b is not None:
            backward_cpu_bias(grad_b, top_diff, num, num_output, top_spatial)
        for i in range(num):
            if grad_w is None and grad_x is None:
                break
            col = im2col(top_diff[i], *geometry)
            for g in range(group):
                if grad_w is not None:  # weight_cpu_gemm(top diff as input, bottom as output)
                    gemm(
                        False, True, m, kernel_dim, spatial, 1.0, (x, i * channels * spatial + g * m * spatial),
                        (col, g * kernel_dim * spatial), 1.0, (grad_w, g * m * kernel_dim),
                    )  # fmt: skip
                if grad_x is not None:  # forward_cpu_gemm(top diff, weight) -> bottom diff
                    gemm(
                        False, False, m, spatial, kernel_dim, 1.0, (weight, g * m * kernel_dim),
                        (col, g * kernel_dim * spatial), 0.0, (grad_x, i * channels * spatial + g * m * spatial),
                    )  # fmt: skip
        return (
            grad_x,
            store_diff(ctx.params[0], grad_w),
            store_diff(ctx.params[1], grad_b),
            None,
            None,
            None,
            None,
            None,
        )


class RowBias(torch.autograd.Function):
    """top (M, N) + bias (N) with the bias diff as EmbedLayer<float>::Backward_cpu sums it: one sgemv over the
    M rows, added to the diff already there."""

    @staticmethod
    def forward(ctx, top, bias):
        ctx.params = (bias,)
        return top + bias

    @staticmethod
    def backward(ctx, top_diff):
        (bias,) = ctx.params
        grad_b = diff_buffer(bias, ctx.needs_input_grad[1])
        if grad_b is not None:
            rows = top_diff.contiguous().view(-1, bias.numel())
            gemv(
                True, rows.shape[0], rows.shape[1], 1.0, (rows, 0), (rows.new_ones(rows.shape[0]), 0), 1.0, (grad_b, 0)
            )
        return top_diff, store_diff(bias, grad_b)
