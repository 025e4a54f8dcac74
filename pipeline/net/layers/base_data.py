"""What every prefetching data layer shares (Caffe's BasePrefetchingDataLayer); registers no layer type itself.

A subclass implements `open_source()`: open and check the source, return the top shapes and a producer (a
callable returning one numpy array per top, float32). Set-up starts a `Prefetcher` on that producer with
`data_param.prefetch` batches in flight; forward hands out the next ready batch. Tops follow the layer's device and
dtype (`net.to("cuda")`, `net.double()`); they are float32 on the CPU otherwise, labels included, as in Caffe.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch

from pipeline.data.errors import layer_data_error
from pipeline.data.prefetch import Prefetcher
from pipeline.errors import DataError
from pipeline.net.layers.base import TRAIN, Layer

Producer = Callable[[], tuple[np.ndarray, ...]]


class PrefetchingDataLayer(Layer):
    is_source = True
    has_backward = False
    num_bottoms = (0, 0)

    def __init__(self, param, phase=TRAIN):
        super().__init__(param, phase)
        self.target = torch.empty(0)
        self.prefetcher: Prefetcher | None = None

    def open_source(self) -> tuple[list[tuple[int, ...]], Producer]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, bottom_shapes):
        try:
            shapes, produce = self.open_source()
        except DataError as exc:
            raise layer_data_error(self, exc) from None
        self.prefetcher = Prefetcher(produce, self.param.data_param.prefetch, name=f"prefetch {self.name}")
        weakref.finalize(self, self.prefetcher.close)
        return shapes

    def forward(self):
        try:
            batch = self.prefetcher.next()
        except DataError as exc:
            raise layer_data_error(self, exc) from None
        device, dtype = self.target.device, self.target.dtype
        tops = tuple(t.to(device=device, dtype=dtype, non_blocking=True) for t in batch)
        return tops[0] if len(tops) == 1 else tops

    def draw_seed(self) -> int:
        """A seed for this layer's own generator, drawn from the net's (Caffe seeds from its global RNG)."""
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator).item())

    def close(self) -> None:
        """Stop the prefetch thread (it also stops when the layer is garbage-collected)."""
        if self.prefetcher is not None:
            self.prefetcher.close()

    def _apply(self, fn, recurse=True):
        # Follow .to()/.cuda()/.double() like a buffer would, without adding a buffer to the state dict.
        self.target = fn(self.target)
        if getattr(self, "prefetcher", None) is not None:
            self.prefetcher.pin_memory = self.target.device.type == "cuda"
        return super()._apply(fn, recurse)

    @property
    def wait_seconds(self) -> float:
        return self.prefetcher.wait_seconds if self.prefetcher is not None else 0.0
