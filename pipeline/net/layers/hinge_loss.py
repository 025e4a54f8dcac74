"""HingeLoss: one-vs-all hinge on (N, C...) scores, label in [0, C).

With t = +1 for the label's column and -1 elsewhere, margin = max(0, 1 - t * x); the loss is sum(margin) / N
(L1) or sum(margin^2) / N (L2). Caffe's backward (sign, resp. 2x, of the margin times -t, over N) is the
derivative autograd takes, including 0 where the margin is exactly 0.
"""

import torch

from pipeline.net.layers.base import Layer, count
from pipeline.net.layers.caffe_losses import CaffeHinge
from pipeline.net.layers.loss_common import check_same_first_dim, class_labels
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron
from pipeline.proto import caffe_pb2

L2 = caffe_pb2.HingeLossParameter.L2


@register("HingeLoss")
class HingeLoss(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        x, labels = bottom_shapes
        check_same_first_dim(self, bottom_shapes)
        self.check(
            count(labels) == x[0],
            f"bottom '{self.bottom_names[1]}' {list(labels)} must hold one label per item of bottom "
            f"'{self.bottom_names[0]}' {list(x)} ({x[0]} labels)",
        )
        self.norm = self.param.hinge_loss_param.norm
        return [()]

    def forward(self, x, labels):
        n = x.shape[0]
        scores = x.reshape(n, -1)
        lab, _ = class_labels(self, labels, scores.shape[1], None)
        if exact_neuron(scores):
            return CaffeHinge.apply(scores, lab, self.norm == L2)
        sign = torch.ones_like(scores).scatter_(1, lab.view(n, 1), -1.0)
        margin = torch.relu(1 + sign * scores)
        total = (margin * margin).sum() if self.norm == L2 else margin.sum()
        return total / n
