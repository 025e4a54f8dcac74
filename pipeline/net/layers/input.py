"""Input: tops whose values are fed from outside (pycaffe's `net.blobs['data'].data[...] = x`)."""

import torch

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register


@register("Input")
class Input(Layer):
    is_source = True
    num_bottoms = (0, 0)

    def setup(self, bottom_shapes):
        shapes = [tuple(s.dim) for s in self.param.input_param.shape]
        n_tops = len(self.top_names)
        self.check(
            len(shapes) in (1, n_tops),
            f"has {len(shapes)} input_param shapes for {n_tops} tops (give one shape for all tops or one per top)",
        )
        self.shapes = shapes * n_tops if len(shapes) == 1 else shapes
        return self.shapes

    def forward(self):
        # Nothing was fed: zeros of the declared shape, as a fresh Caffe blob holds.
        return tuple(torch.zeros(s) for s in self.shapes)
