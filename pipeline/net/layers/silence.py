"""Silence: consumes its bottoms and produces nothing (keeps unused blobs out of the net outputs).

Caffe's backward writes a zero diff to the bottoms; with no top it never feeds a loss, so nothing flows here.
"""

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register


@register("Silence")
class Silence(Layer):
    drop_with_losses = True
    draw_family = "structure"
    num_bottoms = (1, None)
    num_tops = (0, 0)

    def setup(self, bottom_shapes):
        return []

    def forward(self, *bottoms):
        return ()
