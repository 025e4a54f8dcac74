"""Split: one bottom copied to several tops; backward sums the tops' gradients (autograd does the sum)."""

from pipeline.layers.base import Layer
from pipeline.layers.registry import register


@register("Split")
class Split(Layer):
    num_bottoms = (1, 1)
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        return [bottom_shapes[0]] * len(self.top_names)

    def forward(self, x):
        # Views, not the same tensor: each consumer's gradient stays separable (retain_grad per top).
        return tuple(x.view_as(x) for _ in self.top_names)
