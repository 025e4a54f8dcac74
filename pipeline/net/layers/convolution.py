"""Convolution and Deconvolution, 0-D (Caffe's inner product over channels) to 3-D spatial, with Caffe's
kernel/stride/pad/dilation forms."""

import torch
import torch.nn.functional as F

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer, canonical_axis, eager_cpu
from pipeline.net.layers.caffe_gemm import ConvolutionGemm, DeconvolutionGemm
from pipeline.net.layers.registry import register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _prefers_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.dtype == torch.float32 and eager_cpu(x)


def spatial_param(layer, p, field: str, n: int, default: int) -> tuple[int, ...]:
    """Caffe's repeated field: none -> default, one value -> every axis, n values -> one per axis.

    The `_h`/`_w` forms (2-D only) win over the repeated field.
    """
    h_name, w_name = {"kernel_size": ("kernel_h", "kernel_w")}.get(field, (f"{field}_h", f"{field}_w"))
    if field != "dilation" and (p.HasField(h_name) or p.HasField(w_name)):
        layer.check(n == 2, f"{h_name}/{w_name} can only be used for 2-D convolution")
        layer.check(len(getattr(p, field)) == 0, f"either {field} or {h_name}/{w_name} should be given, not both")
        return getattr(p, h_name), getattr(p, w_name)
    values = list(getattr(p, field))
    if not values:
        return (default,) * n
    layer.check(len(values) in (1, n), f"{field} has {len(values)} values for {n} spatial axes")
    return tuple(values) * n if len(values) == 1 else tuple(values)


class _ConvBase(Layer):
    @classmethod
    def blob_count_for(cls, param):
        return 1 + param.convolution_param.bias_term

    num_bottoms = (1, None)
    blob_names = ("weight", "bias")
    transposed = False

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        shape = bottom_shapes[0]
        self.check(len(self.top_names) == len(bottom_shapes), "needs one top per bottom")
        for name, other in zip(self.bottom_names[1:], bottom_shapes[1:]):
            self.check(
                other == shape,
                f"bottom '{name}' {list(other)} must have the shape of '{self.bottom_names[0]}' {list(shape)}",
            )
        self.axis = canonical_axis(self, p.axis, len(shape))
        n = len(shape) - self.axis - 1
        # 0 spatial axes is Caffe's too (BaseConvolutionLayer: num_spatial_axes_ >= 0): an inner product over the
        # channel axis by groups, its kernel, stride, pad and dilation given once or not at all, and ignored.
        self.check(n == 0 or n in _CONV, f"{n} spatial axes are not supported (0 to 3 are)")
        self.check(p.num_output > 0, "convolution_param.num_output must be set and positive")
        self.kernel = spatial_param(self, p, "kernel_size", n, 0)
        self.check(all(k > 0 for k in self.kernel), "kernel size must be given and positive")
        self.stride = spatial_param(self, p, "stride", n, 1)
        self.pad = spatial_param(self, p, "pad", n, 0)
        self.dilation = spatial_param(self, p, "dilation", n, 1)
        self.group = p.group
        channels = shape[self.axis]
        self.check(
            channels % self.group == 0 and p.num_output % self.group == 0,
            f"group {self.group} must divide input channels {channels} and num_output {p.num_output}",
        )
        if self.transposed:
            weight_shape = (channels, p.num_output // self.group, *self.kernel)
        else:
            weight_shape = (p.num_output, channels // self.group, *self.kernel)
        self.add_blob("weight", weight_shape, p.weight_filler)
        self.bias = None
        if p.bias_term:
            self.add_blob("bias", (p.num_output,), p.bias_filler)
        spatial = [self.output_size(i, shape[self.axis + 1 + a], a) for a, i in enumerate(range(n))]
        self.check(all(s > 0 for s in spatial), f"output would be empty: input {list(shape)} gives {spatial}")
        top = tuple(shape[: self.axis]) + (p.num_output, *spatial)
        return [top] * len(bottom_shapes)

    def forward(self, *bottoms):
        tops = tuple(self.apply(x) for x in bottoms)
        return tops[0] if len(tops) == 1 else tops

    def apply(self, x):
        lead = x.shape[: self.axis]
        if self.axis != 1:
            x = x.reshape(-1, *x.shape[self.axis :])
        y = self.compute(x)
        return y.reshape(*lead, *y.shape[1:]) if self.axis != 1 else y

    def extra_repr(self):
        return (
            f"{super().extra_repr()}, weight={list(self.weight.shape)}, kernel={self.kernel}, "
            f"stride={self.stride}, pad={self.pad}, dilation={self.dilation}, group={self.group}"
        )


@register("Convolution")
class Convolution(_ConvBase):
    draw_family = "convolution"

    def setup(self, bottom_shapes):
        tops = super().setup(bottom_shapes)
        if self.weight.dim() == 4 and self.weight.dtype == torch.float32:
            # Keep the weight in NHWC memory, as compute() convolves it: no conversion of the weight forward, nor of
            # its gradient backward. Only strides change; shape, values and every reader stay as they were.
            self.weight.data = self.weight.data.to(memory_format=torch.channels_last)
        return tops

    def output_size(self, i, size, axis):
        extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1
        return (size + 2 * self.pad[axis] - extent) // self.stride[axis] + 1

    def compute(self, x):
        if caffe_blas.active(x):
            return ConvolutionGemm.apply(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group)
        if not self.kernel:  # 0-D: a 1-D convolution over a length-1 axis computes the same product
            return F.conv1d(x[..., None], self.weight[..., None], self.bias, 1, 0, 1, self.group)[..., 0]
        conv = _CONV[len(self.kernel)]
        weight = self.weight
        if _prefers_channels_last(x):
            # oneDNN convolves float32 about 1.5x faster in NHWC memory than in NCHW, forward and backward (LeNet,
            # CIFAR10-quick: bench/net_overhead.py). Only the memory layout changes: shapes and values stay Caffe's
            # NCHW, and `.to` (not `.contiguous`) forces the layout even for one channel.
            x, weight = x.to(memory_format=torch.channels_last), weight.to(memory_format=torch.channels_last)
        return conv(x, weight, self.bias, self.stride, self.pad, self.dilation, self.group)


@register("Deconvolution")
class Deconvolution(_ConvBase):
    draw_family = "convolution"
    transposed = True

    def output_size(self, i, size, axis):
        extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1
        return self.stride[axis] * (size - 1) + extent - 2 * self.pad[axis]

    def compute(self, x):
        if caffe_blas.active(x) and len(self.kernel) == 2:
            out_hw = tuple(self.output_size(i, x.shape[2 + i], i) for i in range(2))
            return DeconvolutionGemm.apply(
                x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group, out_hw
            )
        if not self.kernel:
            return F.conv_transpose1d(x[..., None], self.weight[..., None], self.bias, 1, 0, 0, self.group)[..., 0]
        deconv = _DECONV[len(self.kernel)]
        return deconv(x, self.weight, self.bias, self.stride, self.pad, 0, self.group, self.dilation)
