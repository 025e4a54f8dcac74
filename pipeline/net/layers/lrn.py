"""LRN: local response normalisation, y = x * scale^-beta.

ACROSS_CHANNELS: scale = k + alpha / n * (sum of x^2 over the n channels centred on c, zero beyond the ends).
WITHIN_CHANNEL:  scale = 1 + alpha * (mean of x^2 over the n x n window centred on (h, w), zero padded, always
                 divided by n * n). Caffe builds this branch from Power/Pooling(AVE, pad (n-1)/2)/Eltwise layers
                 and never reads k, so k is ignored here too.
Caffe's backward for both is the exact derivative, so autograd gives it; the bit-exact mode runs Caffe's own
arithmetic (pipeline/net/layers/caffe_lrn.py).
"""

import torch.nn.functional as F

from pipeline.net.layers.base import Layer
from pipeline.net.layers.caffe_lrn import CrossChannelLRN, within_channel_lrn
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron
from pipeline.proto import caffe_pb2

ACROSS_CHANNELS = caffe_pb2.LRNParameter.ACROSS_CHANNELS
WITHIN_CHANNEL = caffe_pb2.LRNParameter.WITHIN_CHANNEL


@register("LRN")
class LRN(Layer):
    draw_family = "normalisation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        p = self.param.lrn_param
        shape = tuple(bottom_shapes[0])
        self.check(p.local_size % 2 == 1, f"local_size must be odd (Caffe supports only odd sizes), got {p.local_size}")
        self.check(
            len(shape) == 4, f"bottom '{self.bottom_names[0]}' must have 4 axes (N, C, H, W), got shape {list(shape)}"
        )
        self.check(p.norm_region in (ACROSS_CHANNELS, WITHIN_CHANNEL), f"unknown norm_region {p.norm_region}")
        self.size, self.pad = int(p.local_size), int(p.local_size - 1) // 2
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        return [shape]

    def forward(self, x):
        if exact_neuron(x):
            if self.region == ACROSS_CHANNELS:
                return CrossChannelLRN.apply(x, self.size, self.alpha, self.beta, self.k)
            return within_channel_lrn(x, self.size, self.alpha, self.beta)
        square = x * x
        if self.region == ACROSS_CHANNELS:
            # Zero-pad the channel axis, then an (n, 1, 1) window over (C, H, W) gives mean = sum / n of n channels.
            padded = F.pad(square, (0, 0, 0, 0, self.pad, self.pad)).unsqueeze(1)
            window_mean = F.avg_pool3d(padded, (self.size, 1, 1), stride=1).squeeze(1)
            scale = self.k + self.alpha * window_mean
        else:
            window_mean = F.avg_pool2d(square, self.size, stride=1, padding=self.pad, count_include_pad=True)
            scale = 1.0 + self.alpha * window_mean
        return x * scale.pow(-self.beta)

    def extra_repr(self):
        region = caffe_pb2.LRNParameter.NormRegion.Name(self.region)
        return f"{super().extra_repr()}, {region}, local_size={self.size}, alpha={self.alpha}, beta={self.beta}" + (
            f", k={self.k}" if self.region == ACROSS_CHANNELS else ""
        )
