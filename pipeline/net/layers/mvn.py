"""MVN: mean-variance normalisation per item and channel (or per item with across_channels).

y = (x - mean) / (std + eps), std = sqrt(mean((x - mean)^2)) (biased), eps added to the std, not the variance;
with normalize_variance false, y = x - mean. Caffe groups by its legacy num()/channels() accessors, so the
bottom may have at most 4 axes and a 2-D (N, D) bottom is normalised per single element (giving zeros).

Caffe's variance backward, (dy - mean(dy) - y * mean(y * dy)) / (std + eps), treats eps as if it were part of the
std; it is the exact derivative only for eps = 0 (the error is of order eps / std). We reproduce it with a custom
autograd Function. The mean-only backward, dy - mean(dy), is the derivative and comes from autograd.
"""

import torch

from pipeline.net.layers.base import Layer, count
from pipeline.net.layers.caffe_reduction_mvn import CaffeMVN
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron


class _NormalizeVariance(torch.autograd.Function):
    """Rows of a (groups, dim) view: forward (x - mean) / (std + eps), backward as Caffe's MVNLayer."""

    @staticmethod
    def forward(ctx, x, eps: float):
        centred = x - x.mean(dim=1, keepdim=True)
        denom = (centred * centred).mean(dim=1, keepdim=True).sqrt() + eps
        y = centred / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, denom = ctx.saved_tensors
        inner = dy.mean(dim=1, keepdim=True) + y * (y * dy).mean(dim=1, keepdim=True)
        return (dy - inner) / denom, None


@register("MVN")
class MVN(Layer):
    draw_family = "normalisation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        p = self.param.mvn_param
        self.check(1 <= len(shape) <= 4, f"bottom '{self.bottom_names[0]}' {list(shape)} must have 1 to 4 axes")
        self.normalize_variance = p.normalize_variance
        self.across_channels = p.across_channels
        self.eps = float(p.eps)
        return [tuple(shape)]

    def forward(self, x):
        split = 1 if self.across_channels or x.dim() == 1 else 2
        rows = x.reshape(count(x.shape, 0, split), count(x.shape, split))
        if exact_neuron(x):
            return CaffeMVN.apply(rows, self.normalize_variance, self.eps).reshape(x.shape)
        if self.normalize_variance:
            y = _NormalizeVariance.apply(rows, self.eps)
        else:
            y = rows - rows.mean(dim=1, keepdim=True)
        return y.reshape(x.shape)
