"""Concat and Slice: join bottoms along one axis, or cut one bottom into pieces along one axis.

Both accept the deprecated `concat_dim` / `slice_dim` spelling (non-negative only) instead of `axis`, never both.
Backward is the plain copy of the matching slice of the diff, which autograd gives.
"""

import torch

from pipeline.net.layers.base import Layer, canonical_axis
from pipeline.net.layers.registry import register


def _legacy_axis(layer: Layer, param, new: str, old: str, num_axes: int) -> int:
    layer.check(not (param.HasField(new) and param.HasField(old)), f"give either {new} or {old}, not both")
    if param.HasField(old):
        legacy = getattr(param, old)
        layer.check(legacy < num_axes, f"{old} {legacy} out of range for a blob with {num_axes} axes")
        return legacy
    return canonical_axis(layer, getattr(param, new), num_axes)


@register("Concat")
class Concat(Layer):
    draw_family = "structure"
    num_bottoms = (1, None)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        first, first_name = bottom_shapes[0], self.bottom_names[0]
        self.axis = _legacy_axis(self, self.param.concat_param, "axis", "concat_dim", len(first))
        total = 0
        for name, shape in zip(self.bottom_names, bottom_shapes):
            same = len(shape) == len(first) and all(
                a == b for i, (a, b) in enumerate(zip(shape, first)) if i != self.axis
            )
            self.check(
                same,
                f"bottom '{name}' {list(shape)} does not match bottom '{first_name}' {list(first)}: "
                f"all bottoms need the same shape except along axis {self.axis}",
            )
            total += shape[self.axis]
        return [(*first[: self.axis], total, *first[self.axis + 1 :])]

    def forward(self, *bottoms):
        if len(bottoms) == 1:
            return bottoms[0].view_as(bottoms[0])
        return torch.cat(bottoms, dim=self.axis)


@register("Slice")
class Slice(Layer):
    draw_family = "structure"
    num_bottoms = (1, 1)
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        p = self.param.slice_param
        self.axis = _legacy_axis(self, p, "axis", "slice_dim", len(shape))
        size, n_tops = shape[self.axis], len(self.top_names)
        where = f"axis {self.axis} of bottom '{self.bottom_names[0]}' {list(shape)}"
        points = list(p.slice_point)
        if points:
            self.check(
                len(points) == n_tops - 1,
                f"{len(points)} slice_point values for {n_tops} tops (need one fewer than the tops)",
            )
            self.check(n_tops <= size, f"cannot cut {where} into {n_tops} pieces")
            bounds = [0, *points]
            for prev, point in zip(bounds, points):
                self.check(point > prev, f"slice_point values must be strictly increasing and positive, got {points}")
            self.check(points[-1] <= size, f"slice_point {points[-1]} lies beyond {where}")
        else:
            self.check(size % n_tops == 0, f"{n_tops} tops do not divide {where} evenly (give slice_point)")
        self.points = points
        return [(*shape[: self.axis], s, *shape[self.axis + 1 :]) for s in self.piece_sizes(size)]

    def piece_sizes(self, size: int) -> list[int]:
        if not self.points:
            return [size // len(self.top_names)] * len(self.top_names)
        return [b - a for a, b in zip([0, *self.points], [*self.points, size])]

    def forward(self, x):
        if len(self.top_names) == 1:
            return x.view_as(x)
        return tuple(torch.split(x, self.piece_sizes(x.shape[self.axis]), dim=self.axis))
