"""EuclideanLoss: sum((a - b)^2) / (2 N). Gradients flow to both bottoms."""

from pipeline.layers.base import Layer, count
from pipeline.layers.registry import register


@register("EuclideanLoss")
class EuclideanLoss(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        a, b = bottom_shapes
        self.check(
            count(a) == count(b) and a[:1] == b[:1],
            f"bottoms '{self.bottom_names[0]}' {list(a)} and '{self.bottom_names[1]}' {list(b)} "
            "must have the same number of elements per item",
        )
        return [()]

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        return (diff * diff).sum() / (2 * a.shape[0])
