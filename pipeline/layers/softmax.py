"""Softmax along `softmax_param.axis` (default 1, the channels).

Caffe subtracts the per-position maximum, exponentiates and divides by the sum, as torch.softmax does; its
backward, (dy - sum(dy * y)) * y, is the exact derivative, so autograd gives Caffe's gradient.
"""

import torch

from pipeline.layers.base import Layer, canonical_axis
from pipeline.layers.registry import register


@register("Softmax")
class Softmax(Layer):
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self, self.param.softmax_param.axis, len(shape))
        return [tuple(shape)]

    def forward(self, x):
        return torch.softmax(x, self.axis)

    def extra_repr(self):
        return f"{super().extra_repr()}, axis={self.axis}"
