"""Accuracy: the fraction of labels found among the top_k scores along `accuracy_param.axis`.

A prediction counts as correct when fewer than top_k other classes score at least as high as the label's class
(ties count against it, as in Caffe's master). Labels equal to ignore_label are skipped; with every label
ignored the accuracy is 0. An optional second top holds the per-class accuracy (0 for classes with no label).
No backward: Caffe's Accuracy::Backward aborts.
"""

import torch

from pipeline.net.layers.base import Layer, canonical_axis, count
from pipeline.net.layers.loss_common import check_label_count, class_labels, ignore_label
from pipeline.net.layers.registry import register


@register("Accuracy")
class Accuracy(Layer):
    drop_with_losses = True
    draw_family = "metric"
    has_backward = False
    num_bottoms = (2, 2)
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        scores, labels = bottom_shapes
        p = self.param.accuracy_param
        self.top_k = p.top_k
        n_labels = count(labels)
        classes = count(scores) // n_labels if n_labels else 0
        self.check(
            self.top_k <= classes,
            f"accuracy_param.top_k {self.top_k} must not exceed the number of classes: bottom "
            f"'{self.bottom_names[0]}' {list(scores)} holds {classes} scores per label of bottom "
            f"'{self.bottom_names[1]}' {list(labels)}",
        )
        self.axis = canonical_axis(self, p.axis, len(scores))
        check_label_count(self, scores, labels, self.axis)
        self.ignore_label = ignore_label(self, p)
        return [()] + [(scores[self.axis],)] * (len(self.top_names) - 1)

    def forward(self, scores, labels):
        num_classes = scores.shape[self.axis]
        outer, inner = check_label_count(self, tuple(scores.shape), tuple(labels.shape), self.axis)
        lab, valid = class_labels(self, labels, num_classes, self.ignore_label)
        x = scores.detach().reshape(outer, num_classes, inner)
        lab, valid = lab.view(outer, 1, inner), valid.view(outer, inner)
        label_score = x.gather(1, lab)
        # The label's own class is among those scoring >= its score (unless that score is NaN).
        at_least_as_high = (x >= label_score).sum(1)
        correct = (at_least_as_high <= self.top_k) & valid
        n_valid = valid.sum()
        accuracy = torch.where(
            n_valid > 0,
            correct.sum().to(x.dtype) / n_valid.clamp(min=1).to(x.dtype),
            torch.zeros((), dtype=x.dtype, device=x.device),
        )
        if len(self.top_names) == 1:
            return accuracy
        flat = lab.view(outer, inner)
        per_label = torch.bincount(flat[valid], minlength=num_classes).to(x.dtype)
        per_hit = torch.bincount(flat[correct], minlength=num_classes).to(x.dtype)
        per_class = torch.where(per_label > 0, per_hit / per_label.clamp(min=1), torch.zeros_like(per_label))
        return accuracy, per_class

    def extra_repr(self):
        return f"{super().extra_repr()}, top_k={self.top_k}, axis={self.axis}"
