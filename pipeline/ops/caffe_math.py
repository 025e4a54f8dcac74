"""Caffe's math_functions on float32 tensors, as the solvers and layers use them: Caffe's rounding where it
matters, and its very calls (OpenBLAS, libm's powf) in the bit-exact mode (pipeline/exact/caffe_blas.py)."""

from __future__ import annotations

import torch

from pipeline.exact import caffe_blas
from pipeline.ops import caffe_cpu


def caffe_square(x: torch.Tensor) -> torch.Tensor:
    """Caffe's caffe_powx(x, 2): libm powf in the bit-exact mode, x * x otherwise (equal but for rare roundings)."""
    if caffe_blas.active(x) and caffe_cpu.available():
        return caffe_cpu.caffe_powx(x, 2.0)
    return x * x


def caffe_axpby(alpha: float, x: torch.Tensor, beta: float, y: torch.Tensor) -> torch.Tensor:
    """Caffe's caffe_cpu_axpby, y = alpha x + beta y in place, as Caffe without MKL computes it: beta y rounded,
    then alpha x added in one fused multiply-add (OpenBLAS sscal + saxpy; exactly those in the bit-exact mode)."""
    if not caffe_blas.axpby(alpha, x, beta, y):
        y.mul_(beta).add_(x, alpha=alpha)
    return y


def caffe_sumsq(x: torch.Tensor) -> float:
    """Caffe's Blob::sumsq_diff: OpenBLAS sdot of the diff with itself in the bit-exact mode."""
    if caffe_blas.active(x):
        return caffe_blas.dot(x, x)
    flat = x.reshape(-1)
    return torch.dot(flat, flat).item()


def caffe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Caffe's caffe_powx(x, 0.5): libm powf in the bit-exact mode, sqrt otherwise."""
    if caffe_blas.active(x) and caffe_cpu.available():
        return caffe_cpu.caffe_powx(x, 0.5)
    return x.sqrt()


def sqrtf(x: torch.Tensor) -> torch.Tensor:
    """Caffe's caffe_sqrt (vsSqrt: sqrtf per element), correctly rounded: torch's own float sqrt on this CPU build
    was measured one ulp off for about one value in six; the square root of the double, rounded, is exact."""
    return torch.sqrt(x.double()).to(x.dtype)
