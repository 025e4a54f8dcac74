"""Scale: y = x * s (+ b with bias_term), with s (and b) broadcast along the axes of x they are aligned to.

s is a learned blob (one bottom; filler default constant 1) or the second bottom, which then receives the diff.
Alignment is Bias's: s covers x.shape[axis:axis+num_axes] (-1: to the end, 0: a scalar). The bias of bias_term
covers as many axes as s from the same `axis` (default filler constant 0). Blob order as Caffe's: [scale, bias]
with one bottom, [bias] with two.
"""

from pipeline.net.layers.base import Layer
from pipeline.net.layers.bias import aligned_axis, broadcastable, learned_blob_shape
from pipeline.net.layers.caffe_scale_bias import CaffeBias, CaffeScale
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron
from pipeline.proto import caffe_pb2


@register("Scale")
class Scale(Layer):
    @classmethod
    def blob_count_for(cls, param):
        return 1 + param.scale_param.bias_term

    draw_family = "normalisation"
    num_bottoms = (1, 2)
    num_tops = (1, 1)
    blob_names = ("weight", "bias")

    def setup(self, bottom_shapes):
        p = self.param.scale_param
        shape = tuple(bottom_shapes[0])
        self.weight = self.bias = None
        if len(bottom_shapes) == 1:
            operand = learned_blob_shape(self, shape, p.axis, p.num_axes, "scale blob")
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1.0)
            self.add_blob("weight", operand, filler)
            what = "scale blob"
        else:
            operand = tuple(bottom_shapes[1])
            what = f"scale bottom '{self.bottom_names[1]}'"
        self.axis = aligned_axis(self, shape, operand, p.axis, what)
        if p.bias_term:
            bias_axes = len(operand) if len(bottom_shapes) > 1 else p.num_axes
            bias_shape = learned_blob_shape(self, shape, p.axis, bias_axes, "bias blob")
            self.add_blob("bias", bias_shape, p.bias_filler)
            self.bias_axis = aligned_axis(self, shape, bias_shape, p.axis, "bias blob")
        return [shape]

    def forward(self, x, scale=None):
        if exact_neuron(x):
            learned = scale is None
            y = CaffeScale.apply(x, self.weight if learned else scale, self.axis, learned)
            return y if self.bias is None else CaffeBias.apply(y, self.bias, self.bias_axis, True)
        scale = self.weight if scale is None else scale
        y = x * broadcastable(scale, x.dim(), self.axis)
        if self.bias is not None:
            y = y + broadcastable(self.bias, x.dim(), self.bias_axis)
        return y

    def extra_repr(self):
        return f"{super().extra_repr()}, axis={self.axis}, bias_term={self.bias is not None}"
