"""BatchNorm with batch statistics as BatchNormLayer<float>'s CPU code computes it, for the bit-exact mode
(pipeline/exact/caffe_blas.py): every per-channel mean is two OpenBLAS sgemv calls (over the spatial axis with the
factor 1 / (N * spatial), then over the batch), the running sums are updated with Caffe's axpby, and the backward
takes its two per-channel sums the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.exact.caffe_blas import gemv
from pipeline.ops.caffe_math import caffe_axpby, sqrtf

f32 = np.float32


def channel_sums(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Caffe's two-step per-channel sum of an (N, C, spatial) buffer, times `scale` in the first step (the mean
    with scale 1 / (N * spatial))."""
    num, channels, spatial = x.shape
    per_image = x.new_empty(num * channels)
    gemv(False, num * channels, spatial, scale, (x, 0), (x.new_ones(spatial), 0), 0.0, (per_image, 0))
    result = x.new_empty(channels)
    gemv(True, num, channels, 1.0, (per_image, 0), (x.new_ones(num), 0), 0.0, (result, 0))
    return result


class CaffeBatchStatsNorm(torch.autograd.Function):
    """Forward normalises by the batch's mean and biased variance and updates the layer's running sums (blobs
    0-2, in place); backward is BatchNormLayer::Backward_cpu."""

    @staticmethod
    def forward(ctx, x, eps: float, blobs, moving_average_fraction: float):
        shape = x.shape
        num, channels = shape[0], shape[1]
        flat = x.contiguous().view(num, channels, -1)
        spatial = flat.shape[2]
        inverse_count = float(f32(1.0 / (num * spatial)))
        mean = channel_sums(flat, inverse_count)
        centred = (flat - mean[None, :, None]).contiguous()
        variance = channel_sums((centred * centred).contiguous(), inverse_count)
        mean_sum, variance_sum, scale_factor = blobs
        maf = float(f32(moving_average_fraction))
        with torch.no_grad():
            scale_factor.mul_(maf).add_(1)
            caffe_axpby(1.0, mean, maf, mean_sum)
            m = x.numel() // channels
            correction = float(f32(m) / f32(m - 1)) if m > 1 else 1.0
            caffe_axpby(correction, variance, maf, variance_sum)
        std = sqrtf(variance + float(f32(eps)))
        y = (centred / std[None, :, None]).contiguous()
        ctx.save_for_backward(y, std)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, top_diff):
        y, std = ctx.saved_tensors
        num, channels, spatial = y.shape
        top_diff = top_diff.contiguous().view(num, channels, spatial)
        # sum(dy * y) per channel, broadcast, times y; plus sum(dy) per channel
        diff = (y * top_diff).contiguous()
        diff = y * channel_sums(diff, 1.0)[None, :, None]
        diff = diff + channel_sums(top_diff, 1.0)[None, :, None]
        # dy - (...) / (N * spatial): Caffe's axpby(1, dy, -1 / m, diff), i.e. sscal then saxpy
        diff = caffe_axpby(1.0, top_diff, float(f32(-1.0 / (num * spatial))), diff.contiguous())
        return (diff / std[None, :, None]).view(ctx.shape), None, None, None
