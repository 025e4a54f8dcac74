"""BatchReindex and Filter: pick items (rows along axis 0) of the data bottoms by an index/selector bottom.

BatchReindex: top[i] = data[index[i]] (index: a 1-D blob of item numbers, repeats allowed; gradients of repeated
items add up). Filter: the last bottom is the selector (one value per item, other axes of size 1); every other
bottom keeps the items whose selector is non-zero, so the top batch size depends on the data: set-up reports the
bottom shapes as an upper bound and the real shapes appear at forward. The index/selector bottoms get no gradient
(Caffe refuses to back-propagate to them).
"""

import torch

from pipeline.net.layers.base import Layer
from pipeline.net.layers.embed import as_indices
from pipeline.net.layers.registry import register


@register("BatchReindex")
class BatchReindex(Layer):
    draw_family = "structure"
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        data, index = bottom_shapes
        self.check(len(data) >= 1, f"data bottom '{self.bottom_names[0]}' needs at least one axis")
        self.check(len(index) == 1, f"index bottom '{self.bottom_names[1]}' {list(index)} must be 1-D")
        return [(index[0], *data[1:])]

    def forward(self, data, index):
        return data.index_select(0, as_indices(self, index, data.shape[0], 1).to(data.device))


@register("Filter")
class Filter(Layer):
    not_exportable = "its output size depends on the values of its selector input"
    draw_family = "structure"
    num_bottoms = (2, None)
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        *data, selector = bottom_shapes
        sel_name = self.bottom_names[-1]
        self.check(
            len(self.top_names) == len(data),
            f"needs one top per filtered bottom: {len(data)} bottoms before the selector, {len(self.top_names)} tops",
        )
        self.check(
            len(selector) >= 1 and all(d == 1 for d in selector[1:]),
            f"selector '{sel_name}' {list(selector)} must have size 1 on every axis but the first",
        )
        for name, shape in zip(self.bottom_names, data):
            self.check(
                len(shape) >= 1 and shape[0] == selector[0],
                f"bottom '{name}' {list(shape)} must have as many items as selector '{sel_name}' {list(selector)}",
            )
        return [tuple(s) for s in data]

    def forward(self, *bottoms):
        *data, selector = bottoms
        keep = torch.nonzero(selector.detach().reshape(-1)).reshape(-1)
        tops = tuple(d.index_select(0, keep.to(d.device)) for d in data)
        return tops[0] if len(tops) == 1 else tops
