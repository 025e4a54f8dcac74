"""Power, Exp, Log: a shift/scale of the input followed by a power, an exponential or a logarithm.

  Power: y = (shift + scale * x) ^ power
  Exp:   y = base ^ (shift + scale * x)        (base -1 means e)
  Log:   y = log_base(shift + scale * x)       (base -1 means e)

Power's backward is Caffe's, not autograd's: Caffe writes the derivative as power * y / x (shift 0) or
power * scale * y / (shift + scale * x), which is 0/0 = NaN where the power's base is exactly 0 although the true
derivative is 0 there (power > 1). Exp and Log diffs are the plain derivatives, so autograd gives them.
"""

import math

import numpy as np
import torch

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import caffe_neuron, caffe_powx, exact_neuron
from pipeline.ops.libm import float_libm

f32 = np.float32


def _caffe_log_base(base: float) -> np.float32:
    """ExpLayer/LogLayer's `log_base` as Caffe computes it in float: 1 for base -1 (e), else logf(base)."""
    return f32(1) if base == -1 else f32(float_libm().logf(base))


class _CaffePower(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, power: float, scale: float, shift: float):
        diff_scale = power * scale
        if diff_scale == 0:
            # The output does not depend on x (power 0 or scale 0).
            value = 1.0 if power == 0 else torch.tensor(shift, dtype=torch.float64).pow(power).item()
            y = torch.full_like(x, value)
        else:
            y = x * scale if scale != 1 else x.clone()
            if shift != 0:
                y.add_(shift)
            if power != 1 and exact_neuron(y):
                y = caffe_powx(y, power)  # caffe_powx: libm powf, not always sqrtf for 0.5 or x * x for 2
            elif power != 1:
                y = y.pow_(power) if power != 2 else y.square_()
        ctx.constants = (power, scale, shift, diff_scale)
        # Keep only what the backward branch reads: nothing for a constant slope, x for power 2, else x and y.
        constant_slope = diff_scale == 0 or power == 1
        ctx.save_for_backward(*(() if constant_slope else (x,) if power == 2 else (x, y)))
        return y

    @staticmethod
    def backward(ctx, grad):
        power, scale, shift, diff_scale = ctx.constants
        if diff_scale == 0 or power == 1:
            return grad * diff_scale, None, None, None
        if power == 2:
            (x,) = ctx.saved_tensors
            local = x * (diff_scale * scale)
            if shift != 0:
                local = local + diff_scale * shift
            return grad * local, None, None, None
        x, y = ctx.saved_tensors
        if shift == 0:
            return grad * (y / x * power), None, None, None
        base = x * scale if scale != 1 else x
        return grad * (y / (base + shift) * diff_scale), None, None, None


@register("Power")
class Power(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        return _CaffePower.apply(x, self.power, self.scale, self.shift)

    def extra_repr(self):
        return f"{super().extra_repr()}, power={self.power}, scale={self.scale}, shift={self.shift}"

    def export_forward(self, x: torch.Tensor):
        # Export (DeployModule): power's TEST forward without state a tracer should not see.
        if self.power * self.scale == 0:
            value = 1.0 if self.power == 0 else float(torch.tensor(self.shift, dtype=torch.float64) ** self.power)
            return torch.full_like(x, value)
        y = x * self.scale if self.scale != 1 else x
        if self.shift != 0:
            y = y + self.shift
        if self.power == 2:
            return y * y
        return y if self.power == 1 else torch.pow(y, self.power)


def _log_of_base(layer: Layer, base: float) -> float:
    """ln(base), with Caffe's base -1 meaning e; other bases must be strictly positive."""
    if base == -1:
        return 1.0
    layer.check(base > 0, f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register("Exp")
class Exp(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        p = self.param.exp_param
        self.base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        # base^(shift + scale x) = base^shift * exp(ln(base) * scale * x), as Caffe factors it.
        self.inner_scale = _log_of_base(self, self.base) * scale
        if shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if self.base == -1 else self.base**shift
        self._caffe_members: list | None = None  # the bit-exact mode's, on its first forward
        return [tuple(bottom_shapes[0])]

    def caffe_members(self) -> list:
        """ExpLayer's inner_scale_ and outer_scale_ in Caffe's float arithmetic, for the bit-exact mode (computed
        once, on its first forward: the default path never needs them)."""
        if self._caffe_members is None:
            p = self.param.exp_param
            shift = float(p.shift)
            if shift == 0:
                outer = f32(1)
            else:
                libm = float_libm()
                outer = f32(libm.expf(shift) if self.base == -1 else libm.powf(self.base, shift))
            self._caffe_members = [_caffe_log_base(self.base) * f32(p.scale), outer]
        return self._caffe_members

    def forward(self, x):
        if exact_neuron(x):
            return caffe_neuron(x, "Exp", self.caffe_members())
        y = torch.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        return y if self.outer_scale == 1 else y * self.outer_scale

    def extra_repr(self):
        return f"{super().extra_repr()}, inner_scale={self.inner_scale}, outer_scale={self.outer_scale}"


@register("Log")
class Log(Layer):
    draw_family = "activation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        p = self.param.log_param
        self.base, self.scale, self.shift = float(p.base), float(p.scale), float(p.shift)
        log_base = _log_of_base(self, self.base)
        self.check(log_base != 0, "base 1 has no logarithm (log(1) = 0)")
        self.base_scale = 1.0 / log_base
        self._caffe_members: list | None = None  # the bit-exact mode's, on its first forward
        return [tuple(bottom_shapes[0])]

    def caffe_members(self) -> list:
        """scale, shift, base_scale_ and backward_num_scale_ as LogLayer holds them (float), for the bit-exact mode
        (computed once, on its first forward: the default path never needs them)."""
        if self._caffe_members is None:
            caffe_log_base = _caffe_log_base(self.base)
            self._caffe_members = [
                f32(self.scale),
                f32(self.shift),
                f32(1) / caffe_log_base,
                f32(self.scale) / caffe_log_base,
            ]
        return self._caffe_members

    def forward(self, x):
        if exact_neuron(x):
            return caffe_neuron(x, "Log", self.caffe_members())
        z = x if self.scale == 1 else x * self.scale
        if self.shift != 0:
            z = z + self.shift
        y = torch.log(z)
        return y if self.base_scale == 1 else y * self.base_scale

    def extra_repr(self):
        return f"{super().extra_repr()}, base={self.base}, scale={self.scale}, shift={self.shift}"
