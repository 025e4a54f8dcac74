"""Parameter: a learnable blob of `parameter_param.shape`, given as its only top (zeros until weights load)."""

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register


@register("Parameter")
class Parameter(Layer):
    num_bottoms = (0, 0)
    num_tops = (1, 1)
    blob_names = ("value",)

    def setup(self, bottom_shapes):
        shape = tuple(self.param.parameter_param.shape.dim)
        self.check(all(d >= 0 for d in shape), f"parameter_param.shape {list(shape)} has a negative dim")
        self.add_blob("value", shape)
        return [shape]

    def forward(self):
        # A view, so the top's gradient lands in the blob's .grad (Caffe shares data and diff).
        return self.value.view(self.value.shape)
