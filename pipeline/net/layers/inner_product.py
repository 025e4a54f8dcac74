"""InnerProduct: y = x W^T + b over the axes from `axis` on; W is (N, K), or (K, N) with `transpose`."""

import torch.nn.functional as F

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer, canonical_axis, count
from pipeline.net.layers.caffe_gemm import InnerProductGemm
from pipeline.net.layers.registry import register


@register("InnerProduct")
class InnerProduct(Layer):
    @classmethod
    def blob_count_for(cls, param):
        return 1 + param.inner_product_param.bias_term

    draw_family = "fully connected"
    num_bottoms = (1, 1)
    num_tops = (1, 1)
    blob_names = ("weight", "bias")

    def setup(self, bottom_shapes):
        p = self.param.inner_product_param
        shape = bottom_shapes[0]
        self.check(p.num_output > 0, "inner_product_param.num_output must be set and positive")
        self.axis = canonical_axis(self, p.axis, len(shape))
        k = count(shape, self.axis)
        self.transpose = p.transpose
        self.add_blob("weight", (k, p.num_output) if p.transpose else (p.num_output, k), p.weight_filler)
        self.bias = None
        if p.bias_term:
            self.add_blob("bias", (p.num_output,), p.bias_filler)
        return [tuple(shape[: self.axis]) + (p.num_output,)]

    def forward(self, x):
        flat = x if x.dim() == self.axis + 1 else x.reshape(*x.shape[: self.axis], -1)
        if caffe_blas.active(x):
            rows = flat.reshape(-1, flat.shape[-1])
            top = InnerProductGemm.apply(rows, self.weight, self.bias, self.transpose)
            return top.reshape(*flat.shape[:-1], top.shape[-1])
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(flat, weight, self.bias)

    def extra_repr(self):
        return f"{super().extra_repr()}, weight={list(self.weight.shape)}, axis={self.axis}"
