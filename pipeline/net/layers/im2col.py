"""Im2col: the convolution patch matrix as a blob, (N, C * prod(kernel), *output_spatial).

Reads convolution_param (kernel/stride/pad/dilation in all of Caffe's forms, axis); channel index
c * prod(kernel) + kernel offset (row-major over the kernel axes), zero padding, output size
(size + 2 pad - dilation (k - 1) - 1) // stride + 1. Works for any number of spatial axes (Caffe's im2col and
im2col_nd give the same layout). Backward (col2im: overlapping patches add up) comes from autograd: for two
spatial axes through F.unfold, whose backward (F.fold) adds the patches in col2im_cpu's order, so the bottom diff
is Caffe's bit for bit (Tensor.unfold's backward sums overlapping windows in another order).
"""

import torch
import torch.nn.functional as F

from pipeline.net.layers.base import Layer, canonical_axis, count
from pipeline.net.layers.convolution import spatial_param
from pipeline.net.layers.registry import register


@register("Im2col")
class Im2col(Layer):
    draw_family = "convolution"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        p = self.param.convolution_param
        self.axis = canonical_axis(self, p.axis, len(shape))
        n = len(shape) - self.axis - 1
        self.check(n >= 1, f"bottom '{self.bottom_names[0]}' {list(shape)} has no spatial axis after axis {self.axis}")
        self.kernel = spatial_param(self, p, "kernel_size", n, 0)
        self.check(all(k > 0 for k in self.kernel), f"kernel size must be given and positive, got {self.kernel}")
        self.stride = spatial_param(self, p, "stride", n, 1)
        self.check(all(s > 0 for s in self.stride), f"stride must be positive, got {self.stride}")
        self.pad = spatial_param(self, p, "pad", n, 0)
        self.dilation = spatial_param(self, p, "dilation", n, 1)
        self.check(all(d > 0 for d in self.dilation), f"dilation must be positive, got {self.dilation}")
        spatial = self.output_spatial(shape[self.axis + 1 :])
        self.check(
            all(s > 0 for s in spatial),
            f"output would be empty: bottom '{self.bottom_names[0]}' {list(shape)} gives {list(spatial)}",
        )
        return [(*shape[: self.axis], shape[self.axis] * count(self.kernel), *spatial)]

    def output_spatial(self, sizes):
        return tuple(
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, k, s, p, d in zip(sizes, self.kernel, self.stride, self.pad, self.dilation)
        )

    def forward(self, x):
        lead, channels, n = x.shape[: self.axis], x.shape[self.axis], len(self.kernel)
        x = x.reshape(-1, channels, *x.shape[self.axis + 1 :])
        if n == 2:
            cols = F.unfold(x, self.kernel, dilation=self.dilation, padding=self.pad, stride=self.stride)
            return cols.reshape(*lead, channels * count(self.kernel), *self.output_spatial(x.shape[2:]))
        x = F.pad(x, [q for p in reversed(self.pad) for q in (p, p)])
        for axis, (k, s, d) in enumerate(zip(self.kernel, self.stride, self.dilation)):
            # Windows along this axis become a trailing dim; dilation keeps every d-th element of each window.
            x = x.unfold(2 + axis, d * (k - 1) + 1, s)
            if d > 1:
                x = x[..., ::d]
        outputs = x.shape[2 : 2 + n]
        x = x.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))
        return x.reshape(*lead, channels * count(self.kernel), *outputs)

    def export_forward(self, x: torch.Tensor):
        # Export (DeployModule): im2col's TEST forward without state a tracer should not see.
        if len(self.kernel) != 2 or self.axis != 1:
            return self(x)
        channels, (kh, kw) = int(x.shape[1]), self.kernel
        eye = torch.eye(kh * kw, dtype=x.dtype).reshape(kh * kw, 1, kh, kw).repeat(channels, 1, 1, 1)
        return F.conv2d(x, eye, None, self.stride, self.pad, self.dilation, channels)
