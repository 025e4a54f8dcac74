"""HintLoss (FitNets, Romero et al. 2015): 0.5 * ||W * student - teacher||^2 / N through a learned 1x1 regressor.

Bottoms: an intermediate student blob (N, Cs, H, W) and a teacher blob (N, Ct, H, W) (or (N, Cs) / (N, Ct)).
The regressor W (Ct, Cs, 1, 1) is this layer's blob, so it trains with the student and is dropped at deploy.
The teacher gets no gradient.
"""

import torch
import torch.nn.functional as F

from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2


@register("HintLoss")
class HintLoss(Layer):
    @classmethod
    def blob_count_for(cls, param):
        return 1 + param.hint_param.bias_term

    num_bottoms = (2, 2)
    num_tops = (1, 1)
    is_loss = True
    blob_names = ("weight", "bias")

    def setup(self, bottom_shapes):
        student, teacher = bottom_shapes
        names = self.bottom_names
        self.check(
            len(student) >= 2
            and len(student) == len(teacher)
            and student[0] == teacher[0]
            and student[2:] == teacher[2:],
            f"student '{names[0]}' {list(student)} and teacher '{names[1]}' {list(teacher)} must agree "
            "in every axis but channels",
        )
        p = self.param.hint_param
        filler = p.regressor_filler if p.HasField("regressor_filler") else caffe_pb2.FillerParameter(type="xavier")
        self.add_blob("weight", (teacher[1], student[1], *([1] * (len(student) - 2))), filler)
        self.bias = None
        if p.bias_term:
            self.add_blob("bias", (teacher[1],))
        return [()]

    def forward(self, student, teacher):
        weight = self.weight.reshape(self.weight.shape[0], -1)
        mapped = torch.movedim(F.linear(torch.movedim(student, 1, -1), weight, self.bias), -1, 1)
        diff = mapped - teacher.detach()
        return (diff * diff).sum() / (2 * student.shape[0])
