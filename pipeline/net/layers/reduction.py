"""Reduction: SUM, ASUM (sum of |x|), SUMSQ (sum of x^2) or MEAN over all axes from `axis` on, times `coeff`.

The top keeps the bottom axes before `axis` (axis 0 gives a scalar, shape ()). The ASUM gradient at x = 0 is 0,
as Caffe's sign(0).
"""

import torch

from pipeline.net.layers.base import Layer, canonical_axis, count
from pipeline.net.layers.caffe_reduction_mvn import CaffeReduction
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron
from pipeline.proto import caffe_pb2

R = caffe_pb2.ReductionParameter


@register("Reduction")
class Reduction(Layer):
    draw_family = "structure"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        p = self.param.reduction_param
        self.axis = canonical_axis(self, p.axis, len(shape))
        self.operation = p.operation
        self.coeff = p.coeff
        self.check(
            count(shape, self.axis) > 0 or self.operation != R.MEAN,
            f"MEAN over an empty range of bottom '{self.bottom_names[0]}' {list(shape)}",
        )
        return [tuple(shape[: self.axis])]

    def forward(self, x):
        dims = tuple(range(self.axis, x.dim()))
        if exact_neuron(x):
            rows = x.reshape(count(x.shape, 0, self.axis), count(x.shape, self.axis))
            return CaffeReduction.apply(rows, self.operation, self.coeff).reshape(x.shape[: self.axis])
        if self.operation == R.ASUM:
            x = x.abs()
        elif self.operation == R.SUMSQ:
            x = x * x
        total = torch.sum(x, dim=dims) if dims else x
        if self.operation == R.MEAN:
            # Caffe folds 1/dim into the coefficient (in the blob's precision) and scales once.
            coeff = torch.tensor(self.coeff, dtype=x.dtype) / count(x.shape, self.axis)
            return total * coeff.to(x.device)
        return total * self.coeff if self.coeff != 1 else total
