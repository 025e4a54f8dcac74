"""Crop: cut bottom 0 to the shape of bottom 1 on every axis from `axis` on.

`offset` gives one start for all cropped axes or one per cropped axis (none = 0). Axes before `axis` keep their
size, but Caffe still requires bottom 1 to be no larger there. Bottom 1 only supplies a shape: it gets no gradient.
"""

from pipeline.net.layers.base import Layer, canonical_axis
from pipeline.net.layers.registry import register


@register("Crop")
class Crop(Layer):
    draw_family = "structure"
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        data, ref = (tuple(s) for s in bottom_shapes)
        p = self.param.crop_param
        n = len(data)
        names = f"'{self.bottom_names[0]}' {list(data)} and reference '{self.bottom_names[1]}' {list(ref)}"
        self.check(len(ref) == n, f"bottoms {names} need the same number of axes")
        self.axis = canonical_axis(self, p.axis, n)
        offsets = list(p.offset)
        cropped = n - self.axis
        self.check(
            len(offsets) <= 1 or len(offsets) == cropped,
            f"{len(offsets)} offsets for the {cropped} cropped axes ({self.axis}..{n - 1}); give one or {cropped}",
        )
        if len(offsets) <= 1:
            offsets = [offsets[0] if offsets else 0] * cropped
        self.offsets = [0] * self.axis + offsets
        for i, (size, want, off) in enumerate(zip(data, ref, self.offsets)):
            self.check(size - off >= want, f"axis {i}: offset {off} + size {want} exceeds {size} for bottoms {names}")
        return [data[: self.axis] + ref[self.axis :]]

    def forward(self, x, ref):
        # Sizes come from the reference at run time (the batch may differ from set-up); ref is never read otherwise.
        index = tuple(slice(off, off + ref.shape[i]) for i, off in enumerate(self.offsets) if i >= self.axis)
        return x[(slice(None),) * self.axis + index]
