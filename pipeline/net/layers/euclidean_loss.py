"""EuclideanLoss: sum((a - b)^2) / (2 N). Gradients flow to both bottoms.

In the bit-exact mode (pipeline/exact/caffe_blas.py) the sum is Caffe's OpenBLAS sdot and the diffs Caffe's
(a - b) * (top_diff / N), so the loss prints as Caffe's to the last digit.
"""

import numpy as np
import torch

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer, count
from pipeline.net.layers.registry import register

f32 = np.float32


class _CaffeEuclidean(torch.autograd.Function):
    """EuclideanLossLayer<float>::Forward_cpu / Backward_cpu: caffe_sub, caffe_cpu_dot, dot / num / 2."""

    @staticmethod
    def forward(ctx, a, b):
        diff = (a - b).contiguous()
        num = a.shape[0]
        ctx.save_for_backward(diff)
        ctx.num = num
        return a.new_tensor(f32(f32(caffe_blas.dot(diff, diff)) / f32(num)) / f32(2))

    @staticmethod
    def backward(ctx, top_diff):
        (diff,) = ctx.saved_tensors
        alpha = f32(f32(top_diff.item()) / f32(ctx.num))  # sign * top_diff / num, then alpha * diff (saxpby)
        return diff * float(alpha), diff * float(-alpha)


@register("EuclideanLoss")
class EuclideanLoss(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        a, b = bottom_shapes
        self.check(
            count(a) == count(b) and a[:1] == b[:1],
            f"bottoms '{self.bottom_names[0]}' {list(a)} and '{self.bottom_names[1]}' {list(b)} "
            "must have the same number of elements per item",
        )
        return [()]

    def forward(self, a, b):
        if caffe_blas.active(a):
            return _CaffeEuclidean.apply(a, b.reshape(a.shape))
        diff = a - b.reshape(a.shape)
        return (diff * diff).sum() / (2 * a.shape[0])
