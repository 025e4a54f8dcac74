"""What Caffe's loss layers share: the LossLayer shape checks, label handling and the loss normaliser.

Labels arrive as float blobs (Caffe blobs are float); Caffe reads them with a C cast to int, which truncates
towards zero, as `.long()` does. Label bottoms never receive a gradient in Caffe, so they are detached here.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.net.layers.base import Layer, Shape, count
from pipeline.proto import caffe_pb2

LossParameter = caffe_pb2.LossParameter
FULL, VALID, BATCH_SIZE, NONE = LossParameter.FULL, LossParameter.VALID, LossParameter.BATCH_SIZE, LossParameter.NONE

#: Caffe clips probabilities before the log: SoftmaxWithLoss at FLT_MIN (also in double), others at kLOG_THRESHOLD.
FLT_MIN = float(np.finfo(np.float32).tiny)
LOG_THRESHOLD = 1e-20


def check_same_first_dim(layer: Layer, bottom_shapes: list[Shape]) -> None:
    """LossLayer::Reshape: bottoms 0 and 1 (data and label) must agree on the first axis."""
    a, b = bottom_shapes[0], bottom_shapes[1]
    names = layer.bottom_names
    layer.check(
        len(a) > 0 and len(b) > 0 and a[0] == b[0],
        f"bottoms '{names[0]}' {list(a)} and '{names[1]}' {list(b)} must have the same first dimension "
        "(data and label)",
    )


def outer_inner(shape: Shape, axis: int) -> tuple[int, int]:
    """Positions before and after the class axis (Caffe's outer_num_ and inner_num_)."""
    return count(shape, 0, axis), count(shape, axis + 1)


def check_label_count(layer: Layer, scores_shape: Shape, label_shape: Shape, axis: int) -> tuple[int, int]:
    """One label per score position outside the class axis; returns (outer, inner)."""
    outer, inner = outer_inner(scores_shape, axis)
    n_labels = count(label_shape)
    if outer * inner != n_labels:
        scores_name, label_name = layer.bottom_names[0], layer.bottom_names[1]
        raise layer.error(
            f"number of labels must match number of predictions: bottom '{label_name}' {list(label_shape)} holds "
            f"{n_labels} labels but bottom '{scores_name}' {list(scores_shape)} with classes on axis {axis} needs "
            f"{outer * inner} (one per position outside the class axis, e.g. N*H*W for (N, C, H, W))"
        )
    return outer, inner


def ignore_label(layer: Layer, param=None) -> int | None:
    param = layer.param.loss_param if param is None else param
    return param.ignore_label if param.HasField("ignore_label") else None


def normalization_mode(layer: Layer, default: int = VALID) -> int:
    """Explicit `normalization`, else the legacy `normalize` (true = VALID, false = BATCH_SIZE), else default."""
    p = layer.param.loss_param
    if p.HasField("normalization"):
        return p.normalization
    if p.HasField("normalize"):
        return VALID if p.normalize else BATCH_SIZE
    return default


def shape_normalizer(mode: int, outer: int, inner: int) -> float:
    """The normaliser when no label is ignored: every mode's count is then a constant of the shape."""
    return float(max(1, {FULL: outer * inner, VALID: outer * inner, BATCH_SIZE: outer, NONE: 1}[mode]))


def normalizer(mode: int, outer: int, inner: int, valid_count: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Caffe's LossLayer::GetNormalizer, clamped to >= 1 so a batch with every label ignored gives 0, not NaN."""
    if mode == VALID:
        value = valid_count.to(like.dtype)
    else:
        value = torch.tensor(
            float({FULL: outer * inner, BATCH_SIZE: outer, NONE: 1}[mode]), dtype=like.dtype, device=like.device
        )
    return value.clamp(min=1.0)


def class_labels(
    layer: Layer, labels: torch.Tensor, num_classes: int, ignore: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat integer labels (ignored ones replaced by 0, a safe index) and the mask of labels that count.

    Caffe only DCHECKs the label range (a release build reads out of bounds); we refuse instead.
    """
    values = labels.detach().reshape(-1).long()
    if ignore is None:
        return checked_class_labels(layer, values, num_classes), torch.ones_like(values, dtype=torch.bool)
    valid = values != ignore
    bad = valid & ((values < 0) | (values >= num_classes))
    if bool(bad.any()):
        first = int(values[bad][0])
        raise layer.error(
            f"label {first} in bottom '{layer.bottom_names[1]}' is out of range "
            f"[0, {num_classes})" + (f" and is not the ignore_label {ignore}" if ignore is not None else "")
        )
    return torch.where(valid, values, torch.zeros_like(values)), valid


def checked_class_labels(layer: Layer, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Flat integer labels, every one in [0, num_classes) (no ignore_label): one min/max pass checks them."""
    values = labels.detach().reshape(-1).long()
    if values.numel():
        low, high = torch.aminmax(values)
        if int(low) < 0 or int(high) >= num_classes:
            first = int(values[(values < 0) | (values >= num_classes)][0])
            raise layer.error(f"label {first} in bottom '{layer.bottom_names[1]}' is out of range [0, {num_classes})")
    return values
