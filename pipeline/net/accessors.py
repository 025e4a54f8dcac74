"""pycaffe-style access to a Net: `net.blobs[name].data / .diff / .shape`, and the learnable blobs a solver sees."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LearnableParam:
    """One learnable blob as the solver sees it (Caffe's learnable_params_ with its multipliers)."""

    tensor: nn.Parameter
    layer: str
    index: int
    lr_mult: float
    decay_mult: float


class Blob:
    """pycaffe-style view of a named blob: `.data`, `.diff`, `.shape`."""

    def __init__(self, net, name: str):  # net: a pipeline.net.Net
        self._net, self.name = net, name

    @property
    def data(self) -> torch.Tensor:
        if self.name in self._net._values:
            return self._net._values[self.name]
        raise KeyError(f"blob '{self.name}' has no data yet: run forward first")

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        self._net.feed[self.name] = value

    @property
    def diff(self) -> torch.Tensor:
        """Gradient of the loss w.r.t. this blob (before any in-place layer), zeros if none flowed."""
        first = self._net._first_values.get(self.name)
        if first is None:
            raise KeyError(f"blob '{self.name}' has no diff: run forward with retain_diffs=True, then backward")
        return first.grad if first.grad is not None else torch.zeros_like(first)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.name in self._net._values:
            return tuple(self._net._values[self.name].shape)
        return self._net.blob_shapes[self.name]

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={list(self.shape)})"


class _BlobMap(OrderedDict):
    pass
