"""MultinomialLogisticLoss: -sum(log(max(p[label], 1e-20))) / N on probabilities p shaped (N, C...).

Caffe's gradient, -1 / (N * max(p[label], 1e-20)) at the label and 0 elsewhere, keeps the 1/p form even where
the clip is active; the clip below is therefore applied to the value only.
"""

from pipeline.net.layers.base import Layer, count
from pipeline.net.layers.loss_common import LOG_THRESHOLD, check_same_first_dim, class_labels
from pipeline.net.layers.registry import register


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        prob, labels = bottom_shapes
        check_same_first_dim(self, bottom_shapes)
        self.check(
            count(labels) == prob[0],
            f"bottom '{self.bottom_names[1]}' {list(labels)} must hold one label per item of bottom "
            f"'{self.bottom_names[0]}' {list(prob)} ({prob[0]} labels)",
        )
        return [()]

    def forward(self, prob, labels):
        n = prob.shape[0]
        flat = prob.reshape(n, -1)
        lab, _ = class_labels(self, labels, flat.shape[1], None)
        picked = flat.gather(1, lab.view(n, 1)).squeeze(1)
        # Value max(p, threshold), gradient of the identity: d(-log)/dp = -1 / max(p, threshold), as Caffe.
        clipped = picked + (picked.clamp_min(LOG_THRESHOLD) - picked).detach()
        return -clipped.log().sum() / n
