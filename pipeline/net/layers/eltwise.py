"""Eltwise: element-wise PROD, SUM (with one coefficient per bottom) or MAX of equally shaped bottoms.

MAX keeps Caffe's tie rule and gradient routing: bottoms 0 and 1 are compared with `>` (a tie goes to bottom 1),
then each later bottom replaces the running max only when strictly larger; the whole gradient goes to the bottom
that won. PROD with `stable_prod_grad: true` back-propagates the product of the other bottoms (the derivative);
with `false` Caffe uses top / bottom instead, which differs where a bottom is 0 (inf or nan, as in Caffe).
"""

import torch

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2

E = caffe_pb2.EltwiseParameter


class _QuotientProd(torch.autograd.Function):
    """Product of the bottoms whose backward is top / bottom_i * top_diff (Caffe's unstable PROD gradient)."""

    @staticmethod
    def forward(ctx, *bottoms):
        top = bottoms[0] * bottoms[1]
        for b in bottoms[2:]:
            top = top * b
        ctx.save_for_backward(top, *bottoms)
        return top

    @staticmethod
    def backward(ctx, grad):
        top, *bottoms = ctx.saved_tensors
        return tuple(top / b * grad if need else None for b, need in zip(bottoms, ctx.needs_input_grad))


class _StableProd(torch.autograd.Function):
    """Product of the bottoms whose backward multiplies the other bottoms in their order, then the top diff, as
    EltwiseLayer::Backward_cpu does (autograd's chain rule would multiply in another order and round otherwise)."""

    @staticmethod
    def forward(ctx, *bottoms):
        top = bottoms[0] * bottoms[1]
        for b in bottoms[2:]:
            top = top * b
        ctx.save_for_backward(*bottoms)
        return top

    @staticmethod
    def backward(ctx, grad):
        bottoms = ctx.saved_tensors
        grads = []
        for i, need in enumerate(ctx.needs_input_grad):
            others = [b for j, b in enumerate(bottoms) if j != i]
            product = others[0]
            for b in others[1:]:
                product = b * product
            grads.append(product * grad if need else None)
        return tuple(grads)


@register("Eltwise")
class Eltwise(Layer):
    draw_family = "structure"
    num_bottoms = (2, None)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        p = self.param.eltwise_param
        first = bottom_shapes[0]
        for name, shape in zip(self.bottom_names[1:], bottom_shapes[1:]):
            self.check(
                tuple(shape) == tuple(first),
                f"bottom '{name}' {list(shape)} must have the shape of bottom '{self.bottom_names[0]}' {list(first)}",
            )
        self.operation = p.operation
        coeffs = list(p.coeff)
        self.check(not coeffs or self.operation == E.SUM, "coeff is only allowed with operation SUM")
        self.check(
            not coeffs or len(coeffs) == len(bottom_shapes),
            f"{len(coeffs)} coeff values for {len(bottom_shapes)} bottoms (give one per bottom)",
        )
        self.coeffs = coeffs or [1.0] * len(bottom_shapes)
        self.stable_prod_grad = p.stable_prod_grad
        return [tuple(first)]

    def forward(self, *bottoms):
        if self.operation == E.PROD:
            return self._prod(bottoms)
        if self.operation == E.SUM:
            top = None
            for c, b in zip(self.coeffs, bottoms):
                # Caffe adds each bottom with saxpy: c * b fused into the running sum.
                if top is None:
                    top = b if c == 1 else b * c
                else:
                    top = top + b if c == 1 else torch.add(top, b, alpha=c)
            return top
        top = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        for b in bottoms[2:]:
            # torch.where routes the gradient to the chosen side: exactly Caffe's argmax mask.
            top = torch.where(b > top, b, top)
        return top

    def _prod(self, bottoms):
        if torch.is_grad_enabled() and any(b.requires_grad for b in bottoms):
            return (_StableProd if self.stable_prod_grad else _QuotientProd).apply(*bottoms)
        top = bottoms[0] * bottoms[1]
        for b in bottoms[2:]:
            top = top * b
        return top
