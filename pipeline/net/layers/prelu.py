"""PReLU: max(x, 0) + a_c * min(x, 0) with a learned slope per channel (axis 1), or one shared slope.

Blob 0 has shape (C,), or is a 0-d scalar with `channel_shared` (Caffe's vector<int>(0) shape).
At x == 0 Caffe takes the negative branch for the input diff and adds nothing to the slope diff, as F.prelu.
In the bit-exact mode (pipeline/exact/caffe_blas.py) the slope diff is summed as PReLULayer::Backward_cpu does, one
element after another in memory order, in float.
"""

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2


class _CaffePReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slopes, channel_shared: bool):
        ctx.save_for_backward(x, slopes)
        ctx.channel_shared = channel_shared
        return F.prelu(x, slopes)

    @staticmethod
    def backward(ctx, top_diff):
        x, slopes = ctx.saved_tensors
        x, top_diff = x.contiguous(), top_diff.contiguous()
        shape = [1, -1] + [1] * (x.dim() - 2)
        grad_x = top_diff * torch.where(x > 0, torch.ones_like(slopes).view(shape), slopes.view(shape))
        # slope_diff[c] += top_diff[i] * bottom_data[i] * (bottom_data[i] <= 0), i running over the blob: for each
        # channel a sequential float sum over images, then positions (np.add.accumulate does not reorder).
        terms = ((top_diff * x) * (x <= 0)).numpy()
        rows = terms.reshape(1, -1) if ctx.channel_shared else terms.reshape(x.shape[0], x.shape[1], -1)
        if not ctx.channel_shared:
            rows = rows.transpose(1, 0, 2).reshape(x.shape[1], -1)
        sums = np.add.accumulate(rows, axis=1, dtype=np.float32)[:, -1]
        return grad_x, torch.from_numpy(sums.copy()).reshape(slopes.shape), None


@register("PReLU")
class PReLU(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)
    blob_names = ("weight",)

    def setup(self, bottom_shapes):
        p = self.param.prelu_param
        shape = tuple(bottom_shapes[0])
        self.check(
            len(shape) >= 2,
            f"bottom '{self.bottom_names[0]}' needs at least 2 axes (N, C, ...), got shape {list(shape)}",
        )
        self.channel_shared = p.channel_shared
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob("weight", () if self.channel_shared else (shape[1],), filler)
        return [shape]

    def forward(self, x):
        if caffe_blas.active(x) and (x.requires_grad or self.weight.requires_grad):
            return _CaffePReLU.apply(x, self.weight.reshape(-1), self.channel_shared)
        return F.prelu(x, self.weight.reshape(-1))

    def extra_repr(self):
        return f"{super().extra_repr()}, channel_shared={self.channel_shared}"
