"""ContrastiveLoss on feature pairs (a, b) shaped (N, C) (or (N, C, 1, 1)) and a similarity flag per pair.

With d2 = ||a - b||^2: similar pairs (int(sim) != 0) add d2; dissimilar pairs add max(margin - sqrt(d2), 0)^2,
or max(margin - d2, 0) with legacy_version. The sum is divided by 2N. Gradients go to a and -(same) to b;
the flag gets none.

Caffe's backward for a dissimilar pair (non-legacy) divides by sqrt(d2) + 1e-4 instead of sqrt(d2), so it is
not quite the derivative of its forward: a custom backward reproduces it.
"""

import torch

from pipeline.net.layers.base import Layer, count
from pipeline.net.layers.caffe_losses import contrastive_forward
from pipeline.net.layers.loss_common import check_same_first_dim
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron


class _Contrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, similar, margin, legacy):
        diff = a - b
        if exact_neuron(diff):
            loss, dist_sq = contrastive_forward(diff, similar, margin, legacy)
        else:
            dist_sq = (diff * diff).sum(1)
            if legacy:
                dissimilar = (margin - dist_sq).clamp_min(0)
            else:
                dissimilar = (margin - dist_sq.sqrt()).clamp_min(0) ** 2
            loss = torch.where(similar, dist_sq, dissimilar).sum() / a.shape[0] / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy = margin, legacy
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = grad_loss / diff.shape[0]
        if ctx.legacy:
            slack = ctx.margin - dist_sq
            push = -alpha.expand_as(dist_sq)
        else:
            dist = dist_sq.sqrt()
            slack = ctx.margin - dist
            push = -alpha * slack / (dist + 1e-4)
        coefficient = torch.where(similar, alpha.expand_as(dist_sq), torch.where(slack > 0, push, 0 * push))
        grad_a = coefficient.unsqueeze(1) * diff
        return grad_a, -grad_a, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(Layer):
    num_bottoms = (3, 3)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        a, b, sim = bottom_shapes
        names = self.bottom_names
        check_same_first_dim(self, bottom_shapes)
        self.check(
            len(a) >= 2 and tuple(a) == tuple(b) and count(a, 2) == 1,
            f"bottoms '{names[0]}' {list(a)} and '{names[1]}' {list(b)} must be feature pairs of the same "
            "shape (N, C) or (N, C, 1, 1)",
        )
        self.check(
            count(sim) == a[0],
            f"bottom '{names[2]}' {list(sim)} must hold one similarity flag per pair ({a[0]} values)",
        )
        p = self.param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)
        return [()]

    def forward(self, a, b, sim):
        n = a.shape[0]
        similar = sim.detach().reshape(-1).long() != 0
        return _Contrastive.apply(a.reshape(n, -1), b.reshape(n, -1), similar, self.margin, self.legacy)

    def extra_repr(self):
        return f"{super().extra_repr()}, margin={self.margin}, legacy_version={self.legacy}"
