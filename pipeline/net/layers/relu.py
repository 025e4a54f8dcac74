"""ReLU: max(x, 0) + negative_slope * min(x, 0).

Caffe's backward passes `negative_slope` (not 1) at x == 0, which is what F.relu / F.leaky_relu do too.
"""

import torch.nn.functional as F

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register


@register("ReLU")
class ReLU(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        self.negative_slope = float(self.param.relu_param.negative_slope)
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        if self.negative_slope == 0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"
