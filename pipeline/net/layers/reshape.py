"""Reshape and Flatten: new shapes for the same data (views; the diff is the top diff reshaped).

Reshape: `shape` replaces the bottom axes [axis, axis + num_axes) (all by default); a dim of 0 copies the bottom
dim at that position, one dim of -1 is inferred from the element count. Flatten: axes [axis, end_axis] become one.

Caffe quirk NOT reproduced: in Caffe, a Flatten whose bottom comes from a Reshape layer (or from a one-bottom
Concat) cuts the gradient, because Flatten's backward re-points its bottom's diff at its own top diff and breaks the
diff sharing that Reshape relies on, so the Reshape bottom never receives a gradient. This is a bug in Caffe's
memory sharing, not a semantic of either layer, and a layer here cannot see which layer produced its bottom; we
back-propagate the true gradient. The reference coverage nets avoid the combination.
"""

import torch

from pipeline.errors import PipelineError
from pipeline.net.layers.base import Layer, canonical_axis, count
from pipeline.net.layers.registry import register


def _not_in_place(layer: Layer) -> None:
    layer.check(layer.top_names[0] != layer.bottom_names[0], "does not allow in-place computation (top == bottom)")


@register("Reshape")
class Reshape(Layer):
    draw_family = "structure"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        _not_in_place(self)
        p = self.param.reshape_param
        self.dims = list(p.shape.dim)
        self.check(self.dims.count(-1) <= 1, f"shape {self.dims} has more than one -1 (at most one dim is inferred)")
        self.check(all(d >= -1 for d in self.dims), f"shape {self.dims} has a dim below -1")
        self.check(p.num_axes >= -1, f"num_axes {p.num_axes} must be >= 0, or -1 for all axes")
        self._cache = (None, None)
        return [self.top_shape(tuple(bottom_shapes[0]))]

    def top_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape == self._cache[0]:
            return self._cache[1]
        p, n = self.param.reshape_param, len(shape)
        what = f"bottom '{self.bottom_names[0]}' {list(shape)}"
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        self.check(0 <= start <= n, f"axis {p.axis} out of range for {what}")
        end = n if p.num_axes == -1 else start + p.num_axes
        self.check(end <= n, f"axis {start} + num_axes {p.num_axes} goes beyond the {n} axes of {what}")
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                self.check(start + i < n, f"shape dim {i} is 0 (copy) but {what} has no axis {start + i} to copy")
                new[i] = shape[start + i]
        total = count(shape)
        if -1 in new:
            known = count(shape[:start]) * count(shape[end:]) * count([d for d in new if d != -1])
            self.check(
                known > 0 and total % known == 0,
                f"cannot infer the -1 dim of shape {self.dims}: {what} has {total} elements, "
                f"not divisible by the {known} fixed by the other dims",
            )
            new[new.index(-1)] = total // known
        top = (*shape[:start], *new, *shape[end:])
        self.check(
            count(top) == total,
            f"shape {self.dims} gives top {list(top)} with {count(top)} elements; {what} has {total}",
        )
        self._cache = (shape, top)
        return top

    def forward(self, x):
        return x.reshape(self.top_shape(tuple(x.shape)))

    def export_forward(self, x: torch.Tensor):
        # Export (DeployModule): reshape's TEST forward without state a tracer should not see.
        rest = tuple(int(d) for d in x.shape[1:])
        try:
            one, two = self.top_shape((1, *rest)), self.top_shape((2, *rest))
        except PipelineError:
            one = two = None
        if one and two and one[1:] == two[1:] and two[0] == 2 * one[0]:
            return x.reshape(-1, *one[1:])
        return self(x)


@register("Flatten")
class Flatten(Layer):
    draw_family = "structure"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        _not_in_place(self)
        shape = bottom_shapes[0]
        p = self.param.flatten_param
        self.start = canonical_axis(self, p.axis, len(shape))
        self.end = canonical_axis(self, p.end_axis, len(shape))
        self.check(
            self.end >= self.start - 1,
            f"end_axis {p.end_axis} comes before axis {p.axis} for bottom '{self.bottom_names[0]}' {list(shape)}",
        )
        return [self.top_shape(tuple(shape))]

    def top_shape(self, shape):
        # end == start - 1 flattens an empty range: Caffe then inserts an axis of size 1.
        return (*shape[: self.start], count(shape, self.start, self.end + 1), *shape[self.end + 1 :])

    def forward(self, x):
        return x.reshape(self.top_shape(tuple(x.shape)))
