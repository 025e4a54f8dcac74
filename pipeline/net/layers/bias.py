"""Bias: y = x + b, with b broadcast along the axes of x it is aligned to.

b is a learned blob (one bottom) or the second bottom (which then receives the diff). It covers the axes
axis .. axis + b.ndim - 1 of x and must match them exactly; the learned blob's shape is x.shape[axis:axis+num_axes]
(num_axes -1: all remaining axes, 0: a scalar). Filler default: constant 0. Scale reuses the alignment helpers.
"""

from __future__ import annotations

import torch

from pipeline.net.layers.base import Layer, Shape, canonical_axis
from pipeline.net.layers.caffe_scale_bias import CaffeBias
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron


def learned_blob_shape(layer: Layer, bottom: Shape, axis: int, num_axes: int, what: str) -> Shape:
    """Shape of a learned operand covering `num_axes` axes of the bottom from `axis` (Caffe's LayerSetUp)."""
    start = canonical_axis(layer, axis, len(bottom))
    layer.check(num_axes >= -1, f"num_axes must be >= 0, or -1 to extend to the end of the bottom; got {num_axes}")
    if num_axes == -1:
        return tuple(bottom[start:])
    layer.check(
        len(bottom) >= start + num_axes,
        f"{what} of {num_axes} axes from axis {start} extends past bottom '{layer.bottom_names[0]}' "
        f"of shape {list(bottom)}",
    )
    return tuple(bottom[start : start + num_axes])


def aligned_axis(layer: Layer, bottom: Shape, operand: Shape, axis: int, what: str) -> int:
    """The bottom axis the operand starts at, after checking its shape matches there (Caffe's Reshape).

    A scalar operand aligns at axis 0 whatever `axis` says (it broadcasts everywhere anyway)."""
    if len(operand) == 0:
        return 0
    start = canonical_axis(layer, axis, len(bottom))
    layer.check(
        len(bottom) >= start + len(operand) and tuple(bottom[start : start + len(operand)]) == tuple(operand),
        f"{what} of shape {list(operand)} does not match bottom '{layer.bottom_names[0]}' of shape "
        f"{list(bottom)} from axis {start}",
    )
    return start


def broadcastable(operand: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """View the operand with trailing singleton axes so it broadcasts against an ndim-axis bottom from `axis`."""
    return operand.reshape(tuple(operand.shape) + (1,) * (ndim - axis - operand.dim()))


@register("Bias")
class Bias(Layer):
    draw_family = "normalisation"
    num_bottoms = (1, 2)
    num_tops = (1, 1)
    blob_names = ("bias",)

    def setup(self, bottom_shapes):
        p = self.param.bias_param
        shape = tuple(bottom_shapes[0])
        self.bias = None
        if len(bottom_shapes) == 1:
            operand = learned_blob_shape(self, shape, p.axis, p.num_axes, "bias blob")
            self.add_blob("bias", operand, p.filler)
            what = "bias blob"
        else:
            operand = tuple(bottom_shapes[1])
            what = f"bias bottom '{self.bottom_names[1]}'"
        self.axis = aligned_axis(self, shape, operand, p.axis, what)
        return [shape]

    def forward(self, x, bias=None):
        if exact_neuron(x):
            return CaffeBias.apply(x, self.bias if bias is None else bias, self.axis, bias is None)
        bias = self.bias if bias is None else bias
        return x + broadcastable(bias, x.dim(), self.axis)

    def extra_repr(self):
        return f"{super().extra_repr()}, axis={self.axis}"
