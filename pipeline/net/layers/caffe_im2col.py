"""Caffe's im2col and col2im on one image (C, *spatial), any number of spatial axes, for the bit-exact mode.

2-D is Caffe's own loops in the C++ op (torch's unfold/fold, which lay out and add up the same way, where the op
cannot be built). Other
dimensions follow im2col_nd_cpu: columns ordered (channel, kernel offset...) by (output position...), and col2im
adds one kernel offset after another into the image, the order Caffe's loop over the column rows adds them.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from pipeline.ops import caffe_cpu


def output_shape(spatial, kernel, stride, pad, dilation) -> tuple[int, ...]:
    return tuple(
        (size + 2 * p - (d * (k - 1) + 1)) // s + 1 for size, k, s, p, d in zip(spatial, kernel, stride, pad, dilation)
    )


def im2col(image: torch.Tensor, kernel, stride, pad, dilation) -> torch.Tensor:
    """(C * prod(kernel), prod(output)) columns of one image, contiguous."""
    if len(kernel) == 2:
        if caffe_cpu.available():
            return torch.ops.caffe_pipeline.caffe_im2col(image, kernel, pad, stride, dilation)
        return F.unfold(image[None], kernel, dilation, pad, stride)[0].contiguous()
    n = len(kernel)
    windows = F.pad(image, [p for p in reversed(pad) for _ in (0, 1)])
    for axis, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        windows = windows.unfold(1 + axis, d * (k - 1) + 1, s)  # appends the window axis
    windows = windows[(slice(None),) * (1 + n) + tuple(slice(None, None, d) for d in dilation)]
    order = [0, *range(1 + n, 1 + 2 * n), *range(1, 1 + n)]
    return windows.permute(order).reshape(image.shape[0] * math.prod(kernel), -1).contiguous()


def col2im(col: torch.Tensor, image_shape, kernel, stride, pad, dilation) -> torch.Tensor:
    """The image (C, *spatial) that sums the columns back, in Caffe's order."""
    channels, *spatial = image_shape
    if len(kernel) == 2:
        if caffe_cpu.available():
            return torch.ops.caffe_pipeline.caffe_col2im(col, list(image_shape), kernel, pad, stride, dilation)
        return F.fold(col[None], tuple(spatial), kernel, dilation, pad, stride)[0]
    out = output_shape(spatial, kernel, stride, pad, dilation)
    padded = col.new_zeros(channels, *(size + 2 * p for size, p in zip(spatial, pad)))
    blocks = col.view(channels, *kernel, *out)
    for offset in itertools.product(*(range(k) for k in kernel)):
        target = tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offset, dilation, stride, out))
        padded[(slice(None), *target)] += blocks[(slice(None), *offset)]
    return padded[(slice(None), *(slice(p, p + size) for p, size in zip(pad, spatial)))]
