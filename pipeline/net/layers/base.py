"""The Layer base class: Caffe's layer life (set-up computes top shapes, forward) as a torch module.

A layer subclass:
  * is registered under its Caffe type name with `@register("Convolution")`;
  * reads its `*_param` message and creates its blobs in `setup(bottom_shapes)`, returning the top shapes;
  * computes tops from bottoms in `forward(*bottoms)` (returns one tensor or a tuple, one per top);
  * lists its Caffe blobs (weights, bias, ...) in Caffe's order in `blob_names`.
Backward comes from autograd; layers whose Caffe backward differs from the autograd of their forward
use a `torch.autograd.Function`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pipeline.errors import NetBuildError
from pipeline.net.fillers import check_filler, fill
from pipeline.proto import caffe_pb2

Shape = tuple[int, ...]
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


class Layer(nn.Module):
    type_name: ClassVar[str] = ""
    #: The top's loss weight defaults to 1 (Caffe: every type whose name ends in "Loss").
    is_loss: ClassVar[bool] = False
    #: False for layers Caffe never back-propagates through (Accuracy, ArgMax, ...): they run without autograd.
    has_backward: ClassVar[bool] = True
    #: Source layers (data layers) read no bottoms; the net may feed their tops instead.
    is_source: ClassVar[bool] = False
    #: Bottom/top counts Caffe checks at set-up; None means any.
    num_bottoms: ClassVar[tuple[int, int | None] | None] = None
    num_tops: ClassVar[tuple[int, int | None] | None] = None
    #: Attribute names of this layer's blobs, in Caffe's blob order (0 = weights, 1 = bias, ...).
    blob_names: ClassVar[tuple[str, ...]] = ()

    # ----- facts about the type, read by the tools through the registry (`layer_class(type).<fact>`) ------
    #: Only meaningful next to the losses (scores against labels, swallows blobs): `embed_net` drops it with the
    #: losses and a deploy net drops it (Accuracy, Silence).
    drop_with_losses: ClassVar[bool] = False
    #: False where a deploy net drops the layer although it is no loss (HDF5Output writes files).
    in_deploy: ClassVar[bool] = True
    #: Why the layer cannot be exported (ONNX, torch.export), or "" where it can.
    not_exportable: ClassVar[str] = ""
    #: The colour family draw_net gives it ("convolution", "activation", ...); "" lets draw decide by the name.
    draw_family: ClassVar[str] = ""
    #: Its blobs are running statistics kept at lr_mult 0 (BatchNorm): lr_mult 0 is no sign of a frozen layer.
    blobs_are_statistics: ClassVar[bool] = False

    @classmethod
    def blob_count_for(cls, param: caffe_pb2.LayerParameter) -> int:
        """How many blobs a layer of this type holds, from its prototxt alone (for freezing each with a
        ParamSpec); types whose count depends on the parameter override it."""
        return len(cls.blob_names)

    def export_forward(self, *bottoms: torch.Tensor):
        """The TEST-phase forward that export traces (DeployModule): the layer's own unless a type computes it
        through state or caches a tracer should not see, where it overrides this with the same numbers."""
        return self(*bottoms)

    def dataset_size(self) -> int | None:
        """Items in one pass over a data layer's source, where the source can tell."""
        return None

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int = TRAIN):
        super().__init__()
        self.param = param
        self.name = param.name
        self.phase = phase
        self.bottom_names = list(param.bottom)
        self.top_names = list(param.top)
        self.generator: torch.Generator | None = None
        #: Caffe's random stream for the blob fillers (pipeline/exact/caffe_rng.py), when the net reproduces Caffe's.
        self.filler_rng = None
        #: False: `add_blob` leaves blobs unfilled (checking their fillers) for weights copied in later; then
        #: `reset_parameters()` fills those the weights did not give (pipeline/export/deploy.py).
        self.fill_blobs = True
        self._fillers: dict[str, caffe_pb2.FillerParameter] = {}

    # ----- to override -------------------------------------------------------------------------------
    def setup(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """Read the parameter message, create blobs, return top shapes. Default: one top shaped like bottom 0."""
        return [tuple(bottom_shapes[0])] * max(1, len(self.top_names))

    def forward(self, *bottoms: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    # ----- helpers for subclasses --------------------------------------------------------------------
    def error(self, message: str) -> NetBuildError:
        return NetBuildError(message, self.name, self.type_name or self.param.type)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.error(message)

    def add_blob(
        self, attr: str, shape: Shape, filler: caffe_pb2.FillerParameter | None = None, learnable: bool = True
    ) -> torch.Tensor:
        """Create a Caffe blob of `shape` filled by `filler` (constant 0 if None) under attribute `attr`."""
        filler = filler if filler is not None else caffe_pb2.FillerParameter(type="constant")
        self._fillers[attr] = filler
        if self.fill_blobs:
            data = fill(filler, tuple(shape), generator=self.filler_rng or self.generator)
        else:
            check_filler(filler, tuple(int(d) for d in shape))
            data = torch.empty(tuple(int(d) for d in shape), dtype=torch.float32)
        if learnable:
            setattr(self, attr, nn.Parameter(data))
        else:
            self.register_buffer(attr, data)
        return getattr(self, attr)

    @torch.no_grad()
    def reset_parameters(self, keep: frozenset[int] | set[int] = frozenset()) -> None:
        """Fill this layer's blobs again from their fillers (torch.nn style), in creation order, from the layer's
        random stream; a blob whose storage (`data_ptr()`) is in `keep` is left as it is (shared with loaded
        weights)."""
        for attr, filler in self._fillers.items():
            blob = getattr(self, attr, None)
            if blob is None or blob.data_ptr() in keep:
                continue
            blob.copy_(fill(filler, tuple(blob.shape), generator=self.filler_rng or self.generator))

    @property
    def blobs(self) -> list[torch.Tensor]:
        """This layer's blobs in Caffe's order (what a caffemodel stores for it)."""
        found = [getattr(self, name, None) for name in self.blob_names]
        return [b for b in found if b is not None]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, bottoms={self.bottom_names}, tops={self.top_names}"


def eager_cpu(x: torch.Tensor) -> bool:
    """A CPU tensor outside tracing and compiling: where layers may take CPU-only fast paths (NHWC memory, C++
    kernels). Traced and compiled graphs (ONNX, torch.export, torch.compile) keep plain ATen ops."""
    return x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def check_counts(layer: Layer, n_bottoms: int, n_tops: int) -> None:
    for what, count, allowed in (("bottom", n_bottoms, layer.num_bottoms), ("top", n_tops, layer.num_tops)):
        if allowed is None:
            continue
        low, high = allowed
        if count < low or (high is not None and count > high):
            expect = f"exactly {low}" if low == high else f"{low}..{high if high is not None else 'any'}"
            raise layer.error(f"takes {expect} {what} blob(s), got {count}")


def canonical_axis(layer: Layer, axis: int, num_axes: int) -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -num_axes <= axis < max(num_axes, 1):
        raise layer.error(f"axis {axis} out of range for a blob with {num_axes} axes")
    return axis + num_axes if axis < 0 else axis


def count(shape: Shape, start: int = 0, end: int | None = None) -> int:
    n = 1
    for d in shape[start:end]:
        n *= d
    return n
