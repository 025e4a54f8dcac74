"""DummyData: a source layer whose tops are made by fillers (synthetic data for timing and tests).

Shapes: `shape` (one for all tops or one per top), or the legacy num/channels/height/width (each given once
for all tops or once per top). Fillers: `data_filler` none (constant 0), one for all tops, or one per top.
As in Caffe, a top with a constant filler is filled once at set-up; every other top is refilled with fresh
random values on every forward.
"""

import torch

from pipeline.errors import NetBuildError
from pipeline.net.fillers import check_filler, fill
from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2

_LEGACY = ("num", "channels", "height", "width")


@register("DummyData")
class DummyData(Layer):
    is_source = True
    num_bottoms = (0, 0)
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        p = self.param.dummy_data_param
        n = len(self.top_names)
        self.check(
            len(p.data_filler) in (0, 1, n),
            f"needs 0, 1 or {n} (one per top) data_filler, got {len(p.data_filler)}",
        )
        self.shapes = self._shapes(p, n)
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[0] if len(fillers) == 1 else fillers[i] for i in range(n)]
        # Keeps the dtype/device the net was moved to, for the tops drawn at forward time.
        self.register_buffer("_like", torch.zeros(0), persistent=False)
        for i, (name, filler, shape) in enumerate(zip(self.top_names, self.fillers, self.shapes)):
            self.check(all(d >= 0 for d in shape), f"top '{name}' has a negative dimension: {list(shape)}")
            try:
                check_filler(filler, shape)
            except NetBuildError as exc:
                raise self.error(f"top '{name}': {exc}") from None
            if filler.type == "constant":
                self.register_buffer(f"_constant{i}", fill(filler, shape, self.generator), persistent=False)
        return self.shapes

    def _shapes(self, p, n: int) -> list[tuple[int, ...]]:
        if any(len(getattr(p, field)) for field in _LEGACY):
            self.check(len(p.shape) == 0, "give either shape or the legacy num/channels/height/width, not both")
            for field in _LEGACY:
                given = len(getattr(p, field))
                self.check(given in (1, n), f"must give '{field}' once, or once per top ({n}); gave it {given} times")
            return [tuple(int(self._pick(getattr(p, field), i)) for field in _LEGACY) for i in range(n)]
        self.check(len(p.shape) in (1, n), f"must give 'shape' once, or once per top ({n}); gave it {len(p.shape)}")
        return [tuple(int(d) for d in self._pick(p.shape, i).dim) for i in range(n)]

    @staticmethod
    def _pick(values, i: int):
        return values[0] if len(values) == 1 else values[i]

    def forward(self):
        tops = []
        for i, (filler, shape) in enumerate(zip(self.fillers, self.shapes)):
            if filler.type == "constant":
                # A copy, so that nothing downstream can change the constant for later passes.
                tops.append(getattr(self, f"_constant{i}").clone())
            else:
                tops.append(fill(filler, shape, self.generator).to(self._like))
        return tuple(tops)

    def extra_repr(self):
        fillers = [f.type for f in self.fillers]
        return f"{super().extra_repr()}, shapes={[list(s) for s in self.shapes]}, fillers={fillers}"
