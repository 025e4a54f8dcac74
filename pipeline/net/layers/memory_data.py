"""MemoryData: batches cut from arrays held in memory, set with `set_input_arrays(data, labels)` as in pycaffe.

Tops: data (batch_size, channels, height, width) and label (batch_size,). Each forward returns the next
batch_size rows, wrapping to row 0 after the last; the number of rows must be a multiple of batch_size. As in
Caffe, the arrays are not transformed (a transform_param only earns a warning). Serving a batch is a slice of
arrays already in memory, so there is no prefetch thread; `wait_seconds` is always 0 for the trainer's report.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.errors import layer_data_error
from pipeline.errors import NetBuildError
from pipeline.glog import get_logger
from pipeline.net.layers.base import TRAIN, Layer
from pipeline.net.layers.registry import register


@register("MemoryData")
class MemoryData(Layer):
    is_source = True
    has_backward = False
    num_bottoms = (0, 0)
    num_tops = (2, 2)
    wait_seconds = 0.0
    prefetcher = None

    def __init__(self, param, phase=TRAIN):
        super().__init__(param, phase)
        self.target = torch.empty(0)
        self.data = self.labels = None
        self.position = 0

    def setup(self, bottom_shapes):
        param = self.param.memory_data_param
        self.batch_size = param.batch_size
        self.item_shape = (param.channels, param.height, param.width)
        self.check(
            self.batch_size > 0 and min(self.item_shape) > 0,
            "batch_size, channels, height and width "
            f"must be specified and positive in memory_data_param (got {self.batch_size}, {self.item_shape})",
        )
        if self.param.HasField("transform_param"):
            get_logger().warning("%s: MemoryData does not transform array data", self.name)
        return [(self.batch_size, *self.item_shape), (self.batch_size,)]

    def dataset_size(self) -> int | None:
        return len(self.data) if self.data is not None else None

    def set_input_arrays(self, data, labels) -> None:
        """Rows of `data` (N, C, H, W) and `labels` (N,) or (N, 1, 1, 1); N a multiple of batch_size."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise layer_data_error(
                self, f"data array has shape {list(data.shape)}, expected (N, {', '.join(map(str, self.item_shape))})"
            )
        if labels.ndim not in (1, 4) or labels.size != len(labels):
            raise layer_data_error(self, f"labels array has shape {list(labels.shape)}, expected (N,) or (N, 1, 1, 1)")
        if len(data) != len(labels):
            raise layer_data_error(
                self, f"data and labels must have the same first dimension ({len(data)} vs {len(labels)})"
            )
        if len(data) == 0 or len(data) % self.batch_size:
            raise layer_data_error(
                self, f"the number of rows ({len(data)}) must be a positive multiple of batch_size ({self.batch_size})"
            )
        self.data = torch.from_numpy(np.array(data, dtype=np.float32, order="C"))
        self.labels = torch.from_numpy(np.array(labels.reshape(-1), dtype=np.float32))
        self.position = 0

    def forward(self):
        if self.data is None:
            raise layer_data_error(self, "no data: call set_input_arrays(data, labels) first")
        rows = slice(self.position, self.position + self.batch_size)
        self.position = (self.position + self.batch_size) % len(self.data)
        device, dtype = self.target.device, self.target.dtype
        return self.data[rows].to(device, dtype), self.labels[rows].to(device, dtype)

    def _apply(self, fn, recurse=True):
        self.target = fn(self.target)
        return super()._apply(fn, recurse)


def set_input_arrays(net, data, labels) -> None:
    """pycaffe's `net.set_input_arrays`: feed the net's first MemoryData layer."""
    for layer in net.layers:
        if isinstance(layer, MemoryData):
            layer.set_input_arrays(data, labels)
            return
    raise NetBuildError(f"net '{net.name}' has no MemoryData layer for set_input_arrays to feed")
