"""Tile: repeat the bottom `tiles` times along `axis` (numpy's tile on that axis); backward sums the copies."""

from pipeline.net.layers.base import Layer, canonical_axis
from pipeline.net.layers.registry import register


@register("Tile")
class Tile(Layer):
    draw_family = "structure"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        p = self.param.tile_param
        self.axis = canonical_axis(self, p.axis, len(shape))
        self.check(p.HasField("tiles"), "tile_param.tiles (the number of copies) must be given")
        self.check(p.tiles > 0, f"tiles must be positive, got {p.tiles}")
        self.tiles = p.tiles
        return [(*shape[: self.axis], shape[self.axis] * self.tiles, *shape[self.axis + 1 :])]

    def forward(self, x):
        repeats = [1] * x.dim()
        repeats[self.axis] = self.tiles
        return x.repeat(*repeats)
