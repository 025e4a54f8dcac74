"""Caffe's weight fillers (filler.hpp), with Caffe's fan definitions.

fan_in = count / shape[0], fan_out = count / shape[1]: for a conv weight (C_out, C_in/g, kh, kw) that is
C_in/g*kh*kw and C_out*kh*kw; for an InnerProduct weight (N_out, K) it is K and N_out.
Values are random like Caffe's; with a CaffeRNG (pipeline/exact/caffe_rng.py: a seeded net in the bit-exact mode) every
filler draws Caffe's very numbers, with Caffe's float arithmetic for scales and fans.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.errors import NetBuildError
from pipeline.proto import caffe_pb2
from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.exact.caffe_rng import CaffeRNG

Filler = Callable[[caffe_pb2.FillerParameter, tuple, "torch.Generator | CaffeRNG | None"], torch.Tensor]
FILLERS: Registry[Filler] = Registry("filler")


def _is_caffe_rng(generator) -> bool:
    """Whether `generator` is Caffe's random stream. Only a seeded net in the bit-exact mode makes one, and it
    imports pipeline/exact/caffe_rng.py to do so: the default path never loads that module."""
    module = sys.modules.get("pipeline.exact.caffe_rng")
    return module is not None and isinstance(generator, module.CaffeRNG)


def register_filler(name: str):
    return FILLERS.register(name)


def fill(param: caffe_pb2.FillerParameter, shape: tuple, generator: torch.Generator | None = None) -> torch.Tensor:
    shape = tuple(int(d) for d in shape)
    check_filler(param, shape)
    return FILLERS.get(param.type)(param, shape, generator).to(torch.float32)


def check_filler(param: caffe_pb2.FillerParameter, shape: tuple) -> None:
    """Raise the errors Caffe's filler would abort with on this blob shape, without drawing any numbers."""
    kind = param.type
    if kind not in FILLERS:
        raise NetBuildError(f"unknown filler type '{kind}'. Known fillers: {', '.join(FILLERS.keys())}")
    where = f"filler '{kind}' on a blob of shape {list(shape)}"
    if kind == "gaussian":
        if param.sparse < -1:
            raise NetBuildError(f"{where}: sparse must be >= -1, got {param.sparse}")
        if param.sparse >= 0 and (not shape or param.sparse > shape[0]):
            raise NetBuildError(
                f"{where}: sparse {param.sparse} needs at least that many outputs (axis 0): "
                "the keep probability sparse / num_outputs must be <= 1"
            )
        if not param.std > 0:
            raise NetBuildError(f"{where}: std must be > 0, got {param.std}")
    elif param.sparse != -1:
        raise NetBuildError(f"{where}: sparsity (sparse: {param.sparse}) is supported by the gaussian filler only")
    if kind == "uniform" and not param.min <= param.max:
        raise NetBuildError(f"{where}: min {param.min} must be <= max {param.max}")
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetBuildError(f"{where}: needs a 4-D blob with square kernels (height == width)")
    elif _count(shape) == 0:
        raise NetBuildError(f"{where}: cannot fill an empty blob")
    # Caffe reads the fans (and positive_unitball's rows) through its legacy 4-D accessors.
    if kind in ("xavier", "msra", "positive_unitball") and len(shape) > 4:
        raise NetBuildError(f"{where}: Caffe's {kind} filler works on blobs of at most 4 axes")


def _count(shape: tuple) -> int:
    return math.prod(shape)


def _fans(shape: tuple) -> tuple[float, float]:
    count = _count(shape)
    fan_in = count / shape[0] if shape else 1.0
    fan_out = count / shape[1] if len(shape) > 1 else float(count)
    return fan_in, fan_out


def _fan_for(param: caffe_pb2.FillerParameter, shape: tuple) -> float:
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def _uniform(shape: tuple, low: float, high: float, generator) -> torch.Tensor:
    if _is_caffe_rng(generator):
        return torch.from_numpy(generator.uniform(_count(shape), low, high)).reshape(shape)
    return torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=generator)


@register_filler("constant")
def constant(param, shape, generator):
    return torch.full(shape, float(param.value), dtype=torch.float64)


@register_filler("uniform")
def uniform(param, shape, generator):
    return _uniform(shape, param.min, param.max, generator)


@register_filler("gaussian")
def gaussian(param, shape, generator):
    if _is_caffe_rng(generator):
        data = generator.gaussian(_count(shape), param.mean, param.std)
        if param.sparse >= 0:  # Caffe's mask: bernoulli(Dtype(sparse) / Dtype(num_outputs)), after the values
            data = data * generator.bernoulli(data.size, np.float32(param.sparse) / np.float32(shape[0]))
        return torch.from_numpy(data).reshape(shape)
    data = torch.empty(shape, dtype=torch.float64).normal_(param.mean, param.std, generator=generator)
    if param.sparse >= 0:
        # Caffe keeps each weight with probability sparse / num_outputs, so each output sees ~sparse inputs.
        keep = param.sparse / shape[0]
        mask = torch.empty(shape, dtype=torch.float64).bernoulli_(keep, generator=generator)
        data *= mask
    return data


@register_filler("positive_unitball")
def positive_unitball(param, shape, generator):
    data = _uniform(shape, 0.0, 1.0, generator)
    rows = data.reshape(shape[0] if shape else 1, -1)
    if _is_caffe_rng(generator):  # each row's sum left to right in float, then divided, as Caffe
        sums = np.add.accumulate(rows.numpy(), axis=1, dtype=np.float32)[:, -1:]
        return (rows / torch.from_numpy(np.ascontiguousarray(sums))).reshape(shape)
    rows /= rows.sum(dim=1, keepdim=True)
    return rows.reshape(shape)


@register_filler("xavier")
def xavier(param, shape, generator):
    if _is_caffe_rng(generator):  # Caffe's float arithmetic: integer fans, sqrt(Dtype(3) / n)
        scale = np.sqrt(np.float32(3) / _caffe_fan(param, shape), dtype=np.float32)
        return _uniform(shape, -scale, scale, generator)
    scale = math.sqrt(3.0 / _fan_for(param, shape))
    return _uniform(shape, -scale, scale, generator)


def _caffe_fan(param: caffe_pb2.FillerParameter, shape: tuple) -> np.float32:
    count = _count(shape)
    fan_in = np.float32(count // shape[0])
    fan_out = np.float32(count // shape[1]) if len(shape) > 1 else np.float32(count)
    if param.variance_norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if param.variance_norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / np.float32(2)
    return fan_in


@register_filler("msra")
def msra(param, shape, generator):
    if _is_caffe_rng(generator):
        std = np.sqrt(np.float32(2) / _caffe_fan(param, shape), dtype=np.float32)
        return torch.from_numpy(generator.gaussian(_count(shape), 0.0, std)).reshape(shape)
    std = math.sqrt(2.0 / _fan_for(param, shape))
    return torch.empty(shape, dtype=torch.float64).normal_(0.0, std, generator=generator)


@register_filler("bilinear")
def bilinear(param, shape, generator):
    # The upsampling kernel FCN uses for Deconvolution: every (out, in) slice gets the same 2-D kernel.
    size = shape[3]
    f = math.ceil(size / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    axis = 1 - torch.abs(torch.arange(size, dtype=torch.float64) / f - c)
    kernel = axis[:, None] * axis[None, :]
    return kernel.expand(shape).clone()


def known_fillers() -> list[str]:
    return FILLERS.keys()
