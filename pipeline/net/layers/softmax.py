"""Softmax along `softmax_param.axis` (default 1, the channels).

Caffe subtracts the per-position maximum, exponentiates and divides by the sum, as torch.softmax does; its
backward, (dy - sum(dy * y)) * y, is the exact derivative, so autograd gives Caffe's gradient. The bit-exact mode
runs Caffe's own arithmetic (pipeline/net/layers/caffe_softmax.py).
"""

import math

import torch

from pipeline.net.layers.base import Layer, canonical_axis
from pipeline.net.layers.caffe_softmax import CaffeSoftmax
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron


@register("Softmax")
class Softmax(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self, self.param.softmax_param.axis, len(shape))
        return [tuple(shape)]

    def forward(self, x):
        if exact_neuron(x):
            outer = math.prod(x.shape[: self.axis])
            return CaffeSoftmax.apply(x.reshape(outer, x.shape[self.axis], -1)).view(x.shape)
        return torch.softmax(x, self.axis)

    def extra_repr(self):
        return f"{super().extra_repr()}, axis={self.axis}"
