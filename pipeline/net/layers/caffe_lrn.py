"""LRN as LRNLayer<float>'s CPU code computes it, for the bit-exact mode (pipeline/exact/caffe_blas.py).

ACROSS_CHANNELS keeps a running window sum per image: the scale of channel c is the previous channel's plus the
head square and minus the tail square, each added with OpenBLAS saxpy; the power is libm's powf. The backward
walks the same window over top_diff * top / scale. WITHIN_CHANNEL is Caffe's own sub-net of layers (Power 2,
AVE pooling, Power (1 + alpha s)^-beta, Eltwise PROD), built here from the same pieces.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.exact.caffe_blas import axpy_at
from pipeline.net.layers.power import _CaffePower
from pipeline.ops.caffe_cpu import caffe_powx

f32 = np.float32


class CrossChannelLRN(torch.autograd.Function):
    """CrossChannelForward_cpu / CrossChannelBackward_cpu on (N, C, H, W)."""

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        x = x.contiguous()
        num, channels, height, width = x.shape
        plane = height * width
        scale = torch.full_like(x, float(f32(k)))
        padded_square = x.new_zeros(channels + size - 1, height, width)
        alpha_over_size = float(f32(alpha) / f32(size))
        pre_pad = (size - 1) // 2
        for n in range(num):
            padded_square[pre_pad : pre_pad + channels] = x[n] * x[n]
            image = n * channels * plane
            for c in range(size):
                axpy_at(plane, alpha_over_size, (padded_square, c * plane), (scale, image))
            for c in range(1, channels):
                scale[n, c] = scale[n, c - 1]
                at = (scale, image + c * plane)
                axpy_at(plane, alpha_over_size, (padded_square, (c + size - 1) * plane), at)
                axpy_at(plane, -alpha_over_size, (padded_square, (c - 1) * plane), at)
        top = caffe_powx(scale, -float(f32(beta))) * x
        ctx.save_for_backward(x, scale, top)
        ctx.constants = (size, alpha, beta)
        return top

    @staticmethod
    def backward(ctx, top_diff):
        x, scale, top = ctx.saved_tensors
        size, alpha, beta = ctx.constants
        top_diff = top_diff.contiguous()
        num, channels, height, width = x.shape
        plane = height * width
        # 2. * alpha_ * beta_ / size_: double arithmetic on the float members, stored as float.
        cache_ratio = float(f32(2.0 * float(f32(alpha)) * float(f32(beta)) / size))
        bottom_diff = (caffe_powx(scale, -float(f32(beta))) * top_diff).contiguous()
        padded_ratio = x.new_zeros(channels + size - 1, height, width)
        accum = x.new_empty(plane)
        shift = size - (size + 1) // 2
        for n in range(num):
            padded_ratio[shift : shift + channels] = top_diff[n] * top[n] / scale[n]
            accum.zero_()
            for c in range(size - 1):
                axpy_at(plane, 1.0, (padded_ratio, c * plane), (accum, 0))
            for c in range(channels):
                axpy_at(plane, 1.0, (padded_ratio, (c + size - 1) * plane), (accum, 0))
                times_bottom = (x[n, c].reshape(-1) * accum).contiguous()
                axpy_at(plane, -cache_ratio, (times_bottom, 0), (bottom_diff, (n * channels + c) * plane))
                axpy_at(plane, -1.0, (padded_ratio, c * plane), (accum, 0))
        return bottom_diff, None, None, None, None


def within_channel_lrn(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """WithinChannelForward: x * (1 + alpha * avg_pool(x^2))^-beta through Caffe's Power/Pooling/Eltwise layers
    (the Split's two diffs add in either order: a sum of two is exact both ways)."""
    square = _CaffePower.apply(x, 2.0, 1.0, 0.0)
    pooled = F.avg_pool2d(square, size, stride=1, padding=(size - 1) // 2, count_include_pad=True)
    return x * _CaffePower.apply(pooled, -float(f32(beta)), float(f32(alpha)), 1.0)
