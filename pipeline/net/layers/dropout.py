"""Dropout: in TRAIN each unit is kept with probability 1 - ratio and kept units are scaled by 1 / (1 - ratio)
(inverted dropout, the scale rounded to the blob's precision as Caffe's Dtype scale_); in TEST it is the identity.

The backward multiplies the diff by the same mask and scale (autograd of x * mask * scale). Masks are drawn from
the net's generator when the blob lives on the CPU, so a seeded net drops the same units run after run.
"""

import torch

from pipeline.net.layers.base import TRAIN, Layer
from pipeline.net.layers.registry import register


@register("Dropout")
class Dropout(Layer):
    draw_family = "regularisation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        # Caffe only DCHECKs the range; a ratio of 1 would scale by infinity, so refuse it here.
        self.check(0 <= self.ratio < 1, f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        if self.phase != TRAIN:
            return x.view_as(x)  # a view, not x itself: the top keeps its own diff
        generator = self.generator if x.device.type == "cpu" else None
        # Caffe keeps a unit when its uniform draw u < 1 - ratio. uniform_ + lt_ draws the same Bernoulli mask
        # about 4x faster than bernoulli_ on the CPU (vectorised); mask * scale is 0 or the scale rounded to x's
        # dtype, so x * it equals Caffe's x * mask * scale_ bitwise.
        scaled_mask = torch.empty_like(x).uniform_(generator=generator).lt_(1.0 - self.ratio).mul_(self.scale)
        return x * scaled_mask

    def extra_repr(self):
        return f"{super().extra_repr()}, dropout_ratio={self.ratio}"

    def export_forward(self, x: torch.Tensor):
        return x  # the identity in TEST: no op in the graph
