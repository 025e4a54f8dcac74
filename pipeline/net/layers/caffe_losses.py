"""SigmoidCrossEntropyLoss, HingeLoss and ContrastiveLoss forward sums as Caffe's CPU code computes them, for the
bit-exact mode (pipeline/exact/caffe_blas.py): the float expressions with libm's expf/logf/sqrtf, sums accumulated
one element after another in float (numpy's cumulative sum is that), and OpenBLAS sdot/sasum where Caffe calls
them.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.exact.caffe_blas import asum_at, dot_at
from pipeline.ops.caffe_math import sqrtf

f32 = np.float32


def sequential_sum(values: torch.Tensor) -> np.float32:
    """v0 + v1 + ... added left to right in float, as a C++ loop over a float accumulator does."""
    flat = values.detach().reshape(-1).numpy()
    return np.add.accumulate(flat, dtype=np.float32)[-1] if flat.size else f32(0)


class CaffeSigmoidCrossEntropy(torch.autograd.Function):
    """loss = -sum over counted elements of x (t - [x >= 0]) - logf(1 + expf(x - 2 x [x >= 0])), over the
    normalizer; backward (sigmoid(x) - t) * top_diff / normalizer, 0 where ignored."""

    @staticmethod
    def forward(ctx, x, target, valid, norm: float):
        positive = (x >= 0).to(x.dtype)
        exps = torch.ops.caffe_pipeline.caffe_neuron(x - (2 * x) * positive, "Exp", [1.0, 1.0])
        logs = torch.ops.caffe_pipeline.caffe_neuron(1 + exps, "Log", [1.0, 0.0, 1.0, 1.0])
        terms = x * (target - positive) - logs
        loss = -sequential_sum(terms[valid])
        ctx.save_for_backward(x, target, valid)
        ctx.norm = f32(norm)
        return x.new_tensor(f32(loss / ctx.norm))

    @staticmethod
    def backward(ctx, grad_loss):
        x, target, valid = ctx.saved_tensors
        sigmoid = torch.ops.caffe_pipeline.caffe_neuron(x, "Sigmoid", [])
        loss_weight = f32(f32(grad_loss.item()) / ctx.norm)
        return (sigmoid - target) * valid * float(loss_weight), None, None, None


class CaffeHinge(torch.autograd.Function):
    """HingeLoss on (N, dim) scores: margins max(0, 1 -+ x), summed by sasum (L1) or sdot (L2), over N."""

    @staticmethod
    def forward(ctx, scores, labels, squared: bool):
        num = scores.shape[0]
        flipped = scores.scatter(1, labels.view(num, 1), -scores.gather(1, labels.view(num, 1)))
        margin = torch.clamp_min(1 + flipped, 0).contiguous()
        count = margin.numel()
        total = dot_at(count, (margin, 0), 1, (margin, 0), 1) if squared else asum_at(count, (margin, 0))
        ctx.save_for_backward(margin, labels)
        ctx.squared = squared
        return scores.new_tensor(f32(f32(total) / f32(num)))

    @staticmethod
    def backward(ctx, grad_loss):
        margin, labels = ctx.saved_tensors
        num = margin.shape[0]
        diff = margin.scatter(1, labels.view(num, 1), -margin.gather(1, labels.view(num, 1)))
        loss_weight = f32(grad_loss.item())
        if ctx.squared:
            return diff * float(f32(f32(loss_weight * f32(2)) / f32(num))), None, None
        return torch.sign(diff) * float(f32(loss_weight / f32(num))), None, None


def contrastive_forward(diff: torch.Tensor, similar: torch.Tensor, margin: float, legacy: bool):
    """ContrastiveLossLayer::Forward_cpu on (N, channels) a - b: per-row sdot, the float sum over rows, / N / 2;
    returns the loss and the squared distances."""
    diff = diff.contiguous()
    num, channels = diff.shape
    dist_sq = diff.new_tensor([dot_at(channels, (diff, i * channels), 1, (diff, i * channels), 1) for i in range(num)])
    if legacy:
        dissimilar = torch.clamp_min(f32(margin) - dist_sq, 0)
    else:
        dist = torch.clamp_min(f32(margin) - sqrtf(dist_sq), 0)
        dissimilar = dist * dist
    loss = sequential_sum(torch.where(similar, dist_sq, dissimilar))
    return diff.new_tensor(f32(f32(loss / f32(num)) / f32(2))), dist_sq
