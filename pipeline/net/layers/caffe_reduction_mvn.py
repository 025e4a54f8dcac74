"""Reduction and MVN as ReductionLayer<float> / MVNLayer<float>'s CPU code computes them, for the bit-exact mode
(pipeline/exact/caffe_blas.py): per-row sums through OpenBLAS sdot/sasum (Reduction) or one sgemv with the factor
1 / dim (MVN), powf squares and roots, and Caffe's own backward expressions.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.exact.caffe_blas import asum_at, dot_at, gemv
from pipeline.ops.caffe_cpu import caffe_powx
from pipeline.ops.caffe_math import caffe_axpby
from pipeline.proto import caffe_pb2

f32 = np.float32
R = caffe_pb2.ReductionParameter


class CaffeReduction(torch.autograd.Function):
    """Rows (num, dim) reduced to (num,): SUM and MEAN as sdot with ones, ASUM as sasum, SUMSQ as sdot with
    itself, then one scaling by coeff (MEAN: coeff / dim, in float)."""

    @staticmethod
    def forward(ctx, rows, operation: int, coeff: float):
        rows = rows.contiguous()
        num, dim = rows.shape
        coeff = f32(coeff) / f32(dim) if operation == R.MEAN else f32(coeff)
        ones = rows.new_ones(dim)
        top = rows.new_empty(num)
        for i in range(num):
            if operation == R.ASUM:
                top[i] = asum_at(dim, (rows, i * dim))
            elif operation == R.SUMSQ:
                top[i] = dot_at(dim, (rows, i * dim), 1, (rows, i * dim), 1)
            else:
                top[i] = dot_at(dim, (ones, 0), 1, (rows, i * dim), 1)
        ctx.save_for_backward(rows)
        ctx.operation, ctx.coeff = operation, coeff
        return top * float(coeff) if coeff != 1 else top

    @staticmethod
    def backward(ctx, top_diff):
        (rows,) = ctx.saved_tensors
        bottom_coeff = (top_diff * float(ctx.coeff))[:, None]  # (*top_diff) * coeff_, in float
        if ctx.operation == R.ASUM:
            grad = torch.sign(rows) * bottom_coeff
        elif ctx.operation == R.SUMSQ:
            grad = (2 * bottom_coeff) * rows
        else:
            grad = bottom_coeff.expand_as(rows).clone()
        return grad, None, None


def _row_means(rows: torch.Tensor, scale: float) -> torch.Tensor:
    num, dim = rows.shape
    result = rows.new_empty(num)
    gemv(False, num, dim, scale, (rows, 0), (rows.new_ones(dim), 0), 0.0, (result, 0))
    return result[:, None]


class CaffeMVN(torch.autograd.Function):
    """MVN on (num, dim) rows: x - mean, and with normalize_variance / (powf(var, 0.5) + eps)."""

    @staticmethod
    def forward(ctx, rows, normalize_variance: bool, eps: float):
        rows = rows.contiguous()
        inverse_dim = float(f32(1.0 / rows.shape[1]))
        top = rows + (-_row_means(rows, inverse_dim))
        denom = None
        if normalize_variance:
            variance = _row_means(caffe_powx(top, 2.0).contiguous(), inverse_dim)
            denom = caffe_powx(variance, 0.5) + float(f32(eps))
            top = top / denom
        if normalize_variance:
            ctx.save_for_backward(top, denom)
        ctx.normalize_variance, ctx.inverse_dim = normalize_variance, inverse_dim
        return top

    @staticmethod
    def backward(ctx, top_diff):
        top_diff = top_diff.contiguous()
        if not ctx.normalize_variance:
            return top_diff + (-_row_means(top_diff, ctx.inverse_dim)), None, None
        top, denom = ctx.saved_tensors
        diff = top * _row_means((top * top_diff).contiguous(), 1.0)
        diff = diff + _row_means(top_diff, 1.0)
        diff = caffe_axpby(1.0, top_diff, float(f32(-ctx.inverse_dim)), diff.contiguous())
        return diff / denom, None, None
