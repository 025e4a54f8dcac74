"""Embed: a lookup table. Each bottom value is an index into the rows of the (input_dim, num_output) weight.

The top has shape bottom.shape + (num_output,), plus the bias when bias_term. Index values are truncated to
integers as Caffe's cast does; out-of-range indices are an error. The index bottom gets no gradient (Caffe refuses
to back-propagate to it); the weight gradient accumulates over repeated indices.
"""

import torch
import torch.nn.functional as F

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer
from pipeline.net.layers.caffe_gemm import RowBias
from pipeline.net.layers.registry import register


def as_indices(layer: Layer, values: torch.Tensor, limit: int, bottom: int) -> torch.Tensor:
    """Float blob values -> int64 indices in [0, limit), truncated toward zero like a C++ cast."""
    index = values.detach().to(torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= limit):
        bad = float(values.detach()[(index < 0) | (index >= limit)][0])
        raise layer.error(f"index {bad:g} in bottom '{layer.bottom_names[bottom]}' is out of range [0, {limit})")
    return index


@register("Embed")
class Embed(Layer):
    @classmethod
    def blob_count_for(cls, param):
        return 1 + param.embed_param.bias_term

    draw_family = "fully connected"
    num_bottoms = (1, 1)
    num_tops = (1, 1)
    blob_names = ("weight", "bias")

    def setup(self, bottom_shapes):
        p = self.param.embed_param
        self.check(p.num_output > 0, "embed_param.num_output must be set and positive")
        self.check(p.input_dim > 0, "embed_param.input_dim must be set and positive")
        self.input_dim = p.input_dim
        self.add_blob("weight", (p.input_dim, p.num_output), p.weight_filler)
        self.bias = None
        if p.bias_term:
            self.add_blob("bias", (p.num_output,), p.bias_filler)
        return [(*bottom_shapes[0], p.num_output)]

    def forward(self, x):
        top = F.embedding(as_indices(self, x, self.input_dim, 0), self.weight)
        if self.bias is None:
            return top
        return RowBias.apply(top, self.bias) if caffe_blas.active(top) else top + self.bias
