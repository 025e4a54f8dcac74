"""Element-wise neuron layers without blobs: Sigmoid, TanH, AbsVal, BNLL, Threshold, Swish, Clip.

Each keeps the bottom's shape. In the bit-exact mode (pipeline/exact/caffe_blas.py) Sigmoid, TanH and BNLL run as
Caffe's own expressions (pipeline/ops/caffe_cpu.py). Otherwise their Caffe backward is the derivative of the
forward, so autograd gives it: AbsVal's diff at 0 is 0 (Caffe's sign), Clip passes the diff where
min <= x <= max (both ends included), BNLL's is exp(x) / (1 + exp(x)). Threshold has no backward in Caffe
(NOT_IMPLEMENTED).
"""

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import caffe_neuron, exact_neuron


class _Neuron(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        self.read_param()
        return [tuple(bottom_shapes[0])]

    def read_param(self) -> None:
        pass


@register("Sigmoid")
class Sigmoid(_Neuron):
    def forward(self, x):
        return caffe_neuron(x, "Sigmoid") if exact_neuron(x) else torch.sigmoid(x)


@register("TanH")
class TanH(_Neuron):
    def forward(self, x):
        return caffe_neuron(x, "TanH") if exact_neuron(x) else torch.tanh(x)


@register("AbsVal")
class AbsVal(_Neuron):
    def forward(self, x):
        return torch.abs(x)


@register("BNLL")
class BNLL(_Neuron):
    """log(1 + exp(x)), computed without overflow for large x."""

    def forward(self, x):
        return caffe_neuron(x, "BNLL") if exact_neuron(x) else F.softplus(x)


@register("Threshold")
class Threshold(_Neuron):
    """1 where x > threshold (strictly), else 0."""

    has_backward = False

    def read_param(self):
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self):
        return f"{super().extra_repr()}, threshold={self.threshold}"


@register("Swish")
class Swish(_Neuron):
    """x * sigmoid(beta * x)."""

    def read_param(self):
        self.beta = float(self.param.swish_param.beta)

    def forward(self, x):
        if exact_neuron(x):
            return caffe_neuron(x, "Swish", [float(np.float32(self.beta))])
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self):
        return f"{super().extra_repr()}, beta={self.beta}"


@register("Clip")
class Clip(_Neuron):
    """min(max(x, min), max)."""

    def read_param(self):
        p = self.param.clip_param
        self.check(p.HasField("min") and p.HasField("max"), "clip_param needs both min and max (required fields)")
        self.check(p.min <= p.max, f"clip_param.min ({p.min}) must not exceed clip_param.max ({p.max})")
        self.min, self.max = float(p.min), float(p.max)

    def forward(self, x):
        return torch.clamp(x, self.min, self.max)

    def extra_repr(self):
        return f"{super().extra_repr()}, min={self.min}, max={self.max}"
