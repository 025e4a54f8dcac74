"""SoftmaxWithLoss: softmax over `softmax_param.axis`, then the mean negative log-likelihood of the labels.

loss = -sum over counted positions of log(max(p[label], FLT_MIN)) / normalizer, where the normalizer follows
loss_param (default VALID: the number of labels that are not ignore_label; never below 1). Caffe's gradient is
(p - onehot(label)) / normalizer, 0 at ignored positions, and the label bottom gets none.

The optional second top is the probabilities. (Caffe 1.0 itself cannot build this layer with two tops: the
internal Softmax inherits the two loss weights. We allow it.) As in Caffe's backward, a gradient arriving at
the probability top is not propagated: only the loss top back-propagates.
"""

import torch

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer, canonical_axis, eager_cpu
from pipeline.net.layers.caffe_softmax import CaffeSoftmaxLoss, CaffeSoftmaxTargetLoss, caffe_label_loss, caffe_softmax
from pipeline.net.layers.loss_common import (
    FLT_MIN,
    check_label_count,
    check_same_first_dim,
    checked_class_labels,
    class_labels,
    ignore_label,
    normalization_mode,
    normalizer,
    shape_normalizer,
)
from pipeline.net.layers.registry import register
from pipeline.ops import caffe_cpu
from pipeline.ops.fast_ops import available as fused_loss_available
from pipeline.ops.fast_ops import softmax_label_loss


class SoftmaxTargetLoss(torch.autograd.Function):
    """-sum(w * log(max(softmax(x), threshold))) / normalizer over scores x shaped (outer, C, inner).

    `w` holds per-position target weights along the class axis (a one-hot label, or an infogain row), zero at
    ignored positions. Caffe's backward, (p * sum(w) - w) / normalizer, is the derivative of this loss except
    where the clip is active; a custom backward keeps Caffe's formula there too and saves the autograd graph.
    """

    @staticmethod
    def forward(ctx, scores, weights, norm, threshold):
        prob = torch.softmax(scores, 1)
        loss = -(weights * prob.clamp_min(threshold).log()).sum() / norm
        ctx.save_for_backward(prob, weights, norm)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, grad_loss, _grad_prob):
        prob, weights, norm = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            grad = (prob * weights.sum(1, keepdim=True) - weights) * (grad_loss / norm)
        return grad, None, None, None


class SoftmaxLabelLoss(torch.autograd.Function):
    """SoftmaxWithLoss's common case, one class index per row of (N, C) scores and no ignore_label: the loss
    -sum(log(max(p[label], FLT_MIN))) / normalizer gathers each row's probability instead of weighting a one-hot
    matrix, and Caffe's backward is p with 1 taken off at the label, times top_diff / normalizer.
    """

    @staticmethod
    def forward(ctx, scores, labels, norm: float, caffe_exact: bool = False):
        # caffe_exact: Caffe's own softmax and loss arithmetic (the bit-exact BLAS mode, pipeline/exact/caffe_blas.py).
        prob = caffe_softmax(scores[:, :, None]).squeeze(2) if caffe_exact else torch.softmax(scores, 1)
        index = labels.unsqueeze(1)
        picked = prob.gather(1, index)
        if caffe_exact:
            loss = caffe_label_loss(picked, norm, FLT_MIN)
        else:
            loss = picked.clamp_min(FLT_MIN).log_().sum().neg_().div_(norm)
        ctx.save_for_backward(prob, index, picked)
        ctx.norm = norm
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        prob, index, picked = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return prob.scatter(1, index, picked - 1).mul_(grad_loss / ctx.norm), None, None, None


def _runs_fused(x: torch.Tensor) -> bool:
    # The C++ op has CPU kernels for float and double.
    return x.dtype in (torch.float32, torch.float64) and eager_cpu(x) and fused_loss_available()


def softmax_target_tops(layer, scores, x, targets, valid, outer, inner, threshold):
    """The loss (and, with a second top, the probabilities shaped like `scores`) of a softmax-target layer."""
    norm = normalizer(layer.normalization, outer, inner, valid.sum(), x)
    if caffe_blas.active(x) and caffe_cpu.available():
        loss, prob = CaffeSoftmaxTargetLoss.apply(x, targets, float(norm), threshold)
    else:
        loss, prob = SoftmaxTargetLoss.apply(x, targets, norm, threshold)
    return loss if len(layer.top_names) == 1 else (loss, prob.reshape(scores.shape))


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        scores, labels = bottom_shapes
        check_same_first_dim(self, bottom_shapes)
        self.axis = canonical_axis(self, self.param.softmax_param.axis, len(scores))
        check_label_count(self, scores, labels, self.axis)
        self.ignore_label = ignore_label(self)
        self.normalization = normalization_mode(self)
        fused_loss_available()  # built (first time only) at set-up, not in the middle of training
        return [()] + [tuple(scores)] * (len(self.top_names) - 1)

    def forward(self, scores, labels):
        num_classes = scores.shape[self.axis]
        outer, inner = check_label_count(self, tuple(scores.shape), tuple(labels.shape), self.axis)
        if inner == 1 and self.ignore_label is None and len(self.top_names) == 1:
            x = scores if scores.dim() == 2 else scores.reshape(outer, num_classes)
            norm = shape_normalizer(self.normalization, outer, inner)
            if caffe_blas.active(x):
                lab = checked_class_labels(self, labels, num_classes)
                return SoftmaxLabelLoss.apply(x, lab, norm, True)
            if _runs_fused(x):
                try:
                    return softmax_label_loss(x, labels, norm)
                except RuntimeError:
                    checked_class_labels(self, labels, num_classes)  # a bad label: say which, in which bottom
                    raise
            return SoftmaxLabelLoss.apply(x, checked_class_labels(self, labels, num_classes), norm)
        lab, valid = class_labels(self, labels, num_classes, self.ignore_label)
        x = scores.reshape(outer, num_classes, inner)
        if caffe_blas.active(x) and caffe_cpu.available():
            loss, prob = CaffeSoftmaxLoss.apply(x, lab.view(outer, inner), valid.view(outer, inner), self.normalization)
            return loss if len(self.top_names) == 1 else (loss, prob.reshape(scores.shape))
        onehot = torch.zeros_like(x).scatter_(1, lab.view(outer, 1, inner), valid.view(outer, 1, inner).to(x.dtype))
        return softmax_target_tops(self, scores, x, onehot, valid, outer, inner, FLT_MIN)

    def extra_repr(self):
        return f"{super().extra_repr()}, axis={self.axis}, ignore_label={self.ignore_label}"
