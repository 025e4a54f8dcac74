"""TeacherEnsemble: several teachers' logits into one soft target for KnowledgeDistillation (Hinton 2015).

ARITHMETIC averages the probabilities softmax(z_i / T) and outputs T * log(mean), a logit whose
softmax at temperature T is exactly that mean; GEOMETRIC averages the logits (the normalised geometric
mean of the probabilities). Teachers are frozen: no gradient flows back.
"""

import math

import torch

from pipeline.net.layers.base import Layer, canonical_axis
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2

Combine = caffe_pb2.TeacherEnsembleParameter


@register("TeacherEnsemble")
class TeacherEnsemble(Layer):
    draw_family = "loss"
    num_bottoms = (1, None)
    num_tops = (1, 1)
    has_backward = False

    def setup(self, bottom_shapes):
        p = self.param.teacher_ensemble_param
        first = bottom_shapes[0]
        for name, shape in zip(self.bottom_names, bottom_shapes):
            self.check(
                shape == first,
                f"teacher '{name}' {list(shape)} differs from '{self.bottom_names[0]}' "
                f"{list(first)}: every teacher must give the same classes",
            )
        weights = list(p.weight) or [1.0] * len(bottom_shapes)
        self.check(len(weights) == len(bottom_shapes), f"{len(weights)} weights for {len(bottom_shapes)} teachers")
        self.check(all(w >= 0 for w in weights) and sum(weights) > 0, "weights must be >= 0 and not all 0")
        self.check(p.temperature > 0, f"temperature must be > 0, got {p.temperature}")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.combine, self.temperature = p.combine, p.temperature
        self.axis = canonical_axis(self, 1, len(first))
        return [first]

    def forward(self, *teachers):
        if self.combine == Combine.GEOMETRIC:
            return sum(w * z for w, z in zip(self.weights, teachers))
        T = self.temperature
        log_probs = torch.stack(
            [torch.log_softmax(z / T, self.axis) + math.log(w) for w, z in zip(self.weights, teachers) if w > 0]
        )
        return T * torch.logsumexp(log_probs, dim=0)
