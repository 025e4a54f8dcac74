"""SigmoidCrossEntropyLoss: cross-entropy between sigmoid(x) and targets in [0, 1], element by element.

Caffe's overflow-free form per element: -(x * (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))); its gradient,
(sigmoid(x) - t) / normalizer, is exactly what autograd gives for this form. Targets whose int cast equals
loss_param.ignore_label count neither in the loss nor in the gradient. Normalisation: an explicit
`normalization`, else the legacy `normalize`, else BATCH_SIZE (divide by N), this layer's own default.
"""

import torch

from pipeline.net.layers.base import Layer, count
from pipeline.net.layers.caffe_losses import CaffeSigmoidCrossEntropy
from pipeline.net.layers.loss_common import (
    BATCH_SIZE,
    check_same_first_dim,
    ignore_label,
    normalization_mode,
    normalizer,
)
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        x, t = bottom_shapes
        check_same_first_dim(self, bottom_shapes)
        self.check(
            count(x) == count(t),
            f"bottoms '{self.bottom_names[0]}' {list(x)} and '{self.bottom_names[1]}' {list(t)} must have the "
            "same count (one target per score)",
        )
        self.ignore_label = ignore_label(self)
        self.normalization = normalization_mode(self, default=BATCH_SIZE)
        return [()]

    def forward(self, x, target):
        t = target.detach().reshape(x.shape)
        positive = (x >= 0).to(x.dtype)
        log_likelihood = x * (t - positive) - torch.log1p(torch.exp(x - 2 * x * positive))
        if self.ignore_label is not None:
            valid = t.long() != self.ignore_label
            log_likelihood = torch.where(valid, log_likelihood, torch.zeros_like(log_likelihood))
            valid_count = valid.sum()
        else:
            valid_count = torch.tensor(x.numel(), device=x.device)
        outer = x.shape[0]
        norm = normalizer(self.normalization, outer, x.numel() // max(outer, 1), valid_count, x)
        if exact_neuron(x):
            valid = valid if self.ignore_label is not None else torch.ones_like(t, dtype=torch.bool)
            return CaffeSigmoidCrossEntropy.apply(x, t, valid, float(norm))
        return -log_likelihood.sum() / norm
