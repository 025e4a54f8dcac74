"""Softmax and SoftmaxWithLoss as SoftmaxLayer<float> / SoftmaxWithLossLayer<float>'s CPU code computes them, for
the bit-exact mode (pipeline/exact/caffe_blas.py).

Scores are viewed as (outer, channels, inner) around the softmax axis. Forward: subtract the per-position maximum,
libm's expf, the sum over channels through OpenBLAS sgemv, divide. Backward: (dy - dot(dy, y)) * y with the dot a
strided OpenBLAS sdot per position. The loss subtracts logf(max(p[label], FLT_MIN)) position by position in float.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.exact.caffe_blas import dot_at, gemv
from pipeline.net.layers.caffe_losses import sequential_sum
from pipeline.net.layers.loss_common import BATCH_SIZE, FLT_MIN, FULL, VALID
from pipeline.ops.libm import float_libm

f32 = np.float32


def caffe_softmax(x: torch.Tensor) -> torch.Tensor:
    """SoftmaxLayer::Forward_cpu on (outer, channels, inner) scores."""
    outer, channels, inner = x.shape
    shifted = (x - x.amax(1, keepdim=True)).contiguous()
    exps = torch.ops.caffe_pipeline.caffe_neuron(shifted, "Exp", [1.0, 1.0])  # caffe_exp: expf
    sums = x.new_empty(outer, inner)
    ones = x.new_ones(channels)
    for i in range(outer):
        gemv(True, channels, inner, 1.0, (exps, i * channels * inner), (ones, 0), 0.0, (sums, i * inner))
    return exps / sums[:, None, :]


class CaffeSoftmax(torch.autograd.Function):
    """The Softmax layer on (outer, channels, inner) scores."""

    @staticmethod
    def forward(ctx, x):
        top = caffe_softmax(x.contiguous())
        ctx.save_for_backward(top)
        return top

    @staticmethod
    def backward(ctx, top_diff):
        (top,) = ctx.saved_tensors
        top_diff = top_diff.contiguous()
        outer, channels, inner = top.shape
        dots = top.new_empty(outer, inner)
        for i in range(outer):
            for k in range(inner):
                at = i * channels * inner + k
                dots[i, k] = dot_at(channels, (top_diff, at), inner, (top, at), inner)
        return (top_diff - dots[:, None, :]) * top


def caffe_normalizer(mode: int, outer: int, inner: int, count: int) -> np.float32:
    """LossLayer::GetNormalizer: the float divisor, at least 1."""
    value = {FULL: outer * inner, VALID: count, BATCH_SIZE: outer}.get(mode, 1)
    return max(f32(1), f32(value))


class CaffeSoftmaxLoss(torch.autograd.Function):
    """SoftmaxWithLoss on (outer, channels, inner) scores with (outer, inner) labels and mask of counted
    positions (ignore_label); returns the loss and the probabilities (the optional second top)."""

    @staticmethod
    def forward(ctx, x, labels, valid, mode: int):
        prob = caffe_softmax(x.contiguous())
        outer, _, inner = prob.shape
        picked = prob.gather(1, labels.view(outer, 1, inner)).view(-1)[valid.view(-1)]
        norm = caffe_normalizer(mode, outer, inner, picked.numel())
        ctx.save_for_backward(prob, labels, valid)
        ctx.norm = norm
        ctx.mark_non_differentiable(prob)
        return caffe_label_loss(picked, norm, FLT_MIN), prob

    @staticmethod
    def backward(ctx, grad_loss, _grad_prob):
        prob, labels, valid = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        outer, _, inner = prob.shape
        index = labels.view(outer, 1, inner)
        diff = prob.scatter(1, index, prob.gather(1, index) - 1)
        diff = diff * valid.view(outer, 1, inner)  # an ignored position's diff is 0
        loss_weight = f32(f32(grad_loss.item()) / ctx.norm)
        return diff * float(loss_weight), None, None, None


def caffe_label_loss(picked: torch.Tensor, normalizer: float, floor: float) -> torch.Tensor:
    """SoftmaxWithLossLayer<float>::Forward_cpu's sum for (rows, classes) scores: loss -= log(max(p[label],
    FLT_MIN)) row by row in float, with libm's logf, then loss / normalizer."""
    logf = float_libm().logf
    loss = f32(0)
    for p in picked.reshape(-1).tolist():
        loss = f32(loss - f32(logf(max(p, floor))))
    return torch.tensor(f32(loss / f32(normalizer)), dtype=picked.dtype)


class CaffeSoftmaxTargetLoss(torch.autograd.Function):
    """InfogainLoss (softmax inside, as this Caffe's): loss -= H[label, l] * logf(max(p_l, threshold)) for every
    counted position and class in order, over the normalizer; backward (p * rowsum(H[label]) - H[label]) times
    top_diff / normalizer. `weights` holds H[label] laid out like the scores, zero where ignored."""

    @staticmethod
    def forward(ctx, x, weights, norm: float, threshold: float):
        prob = caffe_softmax(x.contiguous())
        logs = torch.ops.caffe_pipeline.caffe_neuron(prob.clamp_min(threshold), "Log", [1.0, 0.0, 1.0, 1.0])
        terms = (weights * logs).transpose(1, 2).contiguous()  # position by position, classes innermost
        loss = -sequential_sum(terms)
        ctx.save_for_backward(prob, weights)
        ctx.norm = f32(norm)
        ctx.mark_non_differentiable(prob)
        return x.new_tensor(f32(loss / ctx.norm)), prob

    @staticmethod
    def backward(ctx, grad_loss, _grad_prob):
        prob, weights = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        # sum_rows_H: each row of H summed left to right in float
        row_sums = np.add.accumulate(weights.transpose(1, 2).numpy(), axis=2, dtype=np.float32)[..., -1]
        diff = prob * torch.from_numpy(np.ascontiguousarray(row_sums))[:, None, :] - weights
        return diff * float(f32(f32(grad_loss.item()) / ctx.norm)), None, None, None
