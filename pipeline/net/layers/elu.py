"""ELU: x for x > 0, alpha * (exp(x) - 1) otherwise; the diff at x <= 0 is alpha * exp(x) (= y + alpha)."""

import torch.nn.functional as F

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import caffe_neuron, exact_neuron


@register("ELU")
class ELU(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        self.alpha = float(self.param.elu_param.alpha)
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        if exact_neuron(x):
            return caffe_neuron(x, "ELU", [self.alpha])
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"{super().extra_repr()}, alpha={self.alpha}"
