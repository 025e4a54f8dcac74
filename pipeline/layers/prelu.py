"""PReLU: max(x, 0) + a_c * min(x, 0) with a learned slope per channel (axis 1), or one shared slope.

Blob 0 has shape (C,), or is a 0-d scalar with `channel_shared` (Caffe's vector<int>(0) shape).
At x == 0 Caffe takes the negative branch for the input diff and adds nothing to the slope diff, as F.prelu.
"""

import torch.nn.functional as F

from pipeline.layers.base import Layer
from pipeline.layers.registry import register
from pipeline.proto import caffe_pb2


@register("PReLU")
class PReLU(Layer):
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
        return F.prelu(x, self.weight.reshape(-1))

    def extra_repr(self):
        return f"{super().extra_repr()}, channel_shared={self.channel_shared}"
