"""ArgMax: the indices (and optionally values) of the top_k largest entries.

Without `axis`, per item over all other axes flattened: top shape (N, 1, top_k), or (N, 2, top_k) with
out_max_val (indices, then values), padded with trailing 1s to the bottom's number of axes (at least 3).
With `axis`: the bottom's shape with that axis cut to top_k, holding the values if out_max_val, else the
indices. Indices are written as floats (Caffe blobs are float). Ties go to the larger index, as Caffe's
partial_sort on (value, index) pairs with std::greater does. No backward.
"""

import torch

from pipeline.net.layers.base import Layer, canonical_axis, count
from pipeline.net.layers.registry import register


def top_k_caffe(x: torch.Tensor, dim: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest along dim, sorted descending, ties broken towards the larger index."""
    size = x.shape[dim]
    values, order = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, k), (size - 1 - order).narrow(dim, 0, k)


@register("ArgMax")
class ArgMax(Layer):
    draw_family = "metric"
    has_backward = False
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.param.argmax_param
        self.out_max_val, self.top_k = p.out_max_val, p.top_k
        self.check(self.top_k >= 1, "argmax_param.top_k must be at least 1")
        self.axis = canonical_axis(self, p.axis, len(shape)) if p.HasField("axis") else None
        if self.axis is not None:
            self.check(
                self.top_k <= shape[self.axis],
                f"argmax_param.top_k {self.top_k} must not exceed the size {shape[self.axis]} of axis "
                f"{self.axis} of bottom '{self.bottom_names[0]}' {list(shape)}",
            )
        else:
            self.check(
                len(shape) >= 1 and self.top_k <= count(shape, 1),
                f"argmax_param.top_k {self.top_k} must not exceed the {count(shape, 1)} values per item of "
                f"bottom '{self.bottom_names[0]}' {list(shape)}",
            )
        return [self._top_shape(shape)]

    def _top_shape(self, shape):
        if self.axis is not None:
            return shape[: self.axis] + (self.top_k,) + shape[self.axis + 1 :]
        top = [1] * max(len(shape), 3)
        top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, self.top_k
        return tuple(top)

    def forward(self, x):
        x = x.detach()
        if self.axis is not None:
            values, indices = top_k_caffe(x, self.axis, self.top_k)
            return values if self.out_max_val else indices.to(x.dtype)
        values, indices = top_k_caffe(x.reshape(x.shape[0], -1), 1, self.top_k)
        rows = (indices.to(x.dtype), values) if self.out_max_val else (indices.to(x.dtype),)
        return torch.stack(rows, 1).reshape(self._top_shape(tuple(x.shape)))

    def extra_repr(self):
        return f"{super().extra_repr()}, top_k={self.top_k}, axis={self.axis}, out_max_val={self.out_max_val}"

    def export_forward(self, x: torch.Tensor):
        # Export (DeployModule): argmax's TEST forward without state a tracer should not see.
        def top_k(values: torch.Tensor, dim: int):
            size = values.shape[dim]
            best, order = torch.topk(values.flip(dim), self.top_k, dim=dim, largest=True, sorted=True)
            return best, (size - 1 - order).to(values.dtype)

        if self.axis is not None:
            best, index = top_k(x, self.axis)
            return best if self.out_max_val else index
        best, index = top_k(x.reshape(x.shape[0], -1), 1)
        rows = (index, best) if self.out_max_val else (index,)
        static = (1, *(int(d) for d in x.shape[1:]))  # int() of the batch would pin it
        return torch.stack(rows, 1).reshape(x.shape[0], *self._top_shape(static)[1:])
