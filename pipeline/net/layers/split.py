"""Split: one bottom copied to several tops; backward sums the tops' gradients.

Autograd sums them too, but in the order the consumers' backwards finish (last consumer first). In the
bit-exact mode (pipeline/exact/caffe_blas.py) the sum follows SplitLayer::Backward_cpu instead: top 0 + top 1, then
each further top added in turn, so a blob feeding several layers gets Caffe's gradient to the last bit.
"""

import torch

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register


class CaffeOrderSplit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, count: int):
        return tuple(x.clone() for _ in range(count))

    @staticmethod
    def backward(ctx, *grads):
        total = None
        for grad in grads:
            if grad is not None:
                total = grad.clone() if total is None else total.add_(grad)
        return total, None


@register("Split")
class Split(Layer):
    draw_family = "structure"
    num_bottoms = (1, 1)
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        return [bottom_shapes[0]] * len(self.top_names)

    def forward(self, x):
        if caffe_blas.active(x) and x.requires_grad and len(self.top_names) > 1:
            return CaffeOrderSplit.apply(x, len(self.top_names))
        # Views, not the same tensor: each consumer's gradient stays separable (retain_grad per top).
        return tuple(x.view_as(x) for _ in self.top_names)

    def export_forward(self, x: torch.Tensor):
        return (x,) * len(self.top_names)  # copies of the bottom: no op in the graph
