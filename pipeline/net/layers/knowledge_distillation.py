"""KnowledgeDistillation: the KD Caffe fork's layer (field 147), computed by our fused C++ op.

Bottoms: student logits, teacher logits (or probabilities with `teacher_is_prob`), optional label.
Loss: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * cross-entropy(s, label), or logit
matching 0.5 * ||s - t||^2; normalised like SoftmaxWithLoss (loss_param normalization, ignore_label).
Only the student receives a gradient. The class axis is `axis`, else `softmax_param { axis }` (the fork's).

Two syntaxes. The public fork's (wentianli/knowledge_distillation_caffe): knowledge_distillation_param sets
only `temperature` (its one field), none of ours (numbers >= 1000). Such a layer reports what the fork's
Forward_cpu reports, KL without T^2 and with probabilities clamped at FLT_MIN; its gradient still carries T^2,
as the fork's Backward_cpu. Setting any of our fields (alpha, mode, teacher_is_prob, axis, cache_teacher)
selects the extended syntax, whose reported loss is the one above (T^2 KL, exact log-softmax).
"""

from pipeline.net.layers.base import Layer, canonical_axis
from pipeline.net.layers.registry import register
from pipeline.ops.distill import distill_loss, load_library
from pipeline.proto import caffe_pb2

KD = caffe_pb2.KnowledgeDistillationParameter
Norm = caffe_pb2.LossParameter


def loss_normalization(loss_param: caffe_pb2.LossParameter) -> str:
    """SoftmaxWithLoss's rule: explicit `normalization`, else legacy `normalize: false` = BATCH_SIZE, else VALID."""
    if loss_param.HasField("normalization"):
        return Norm.NormalizationMode.Name(loss_param.normalization)
    if loss_param.HasField("normalize") and not loss_param.normalize:
        return "BATCH_SIZE"
    return "VALID"


def is_fork_syntax(p: caffe_pb2.KnowledgeDistillationParameter) -> bool:
    """True when none of our extension fields (numbers >= 1000) is set: the layer as the public fork wrote it."""
    return not any(p.HasField(f.name) for f in p.DESCRIPTOR.fields if f.number >= 1000)


@register("KnowledgeDistillation")
class KnowledgeDistillation(Layer):
    num_bottoms = (2, 3)
    num_tops = (1, 1)
    is_loss = True

    def setup(self, bottom_shapes):
        p = self.param.knowledge_distillation_param
        student, teacher = bottom_shapes[:2]
        names = self.bottom_names
        self.check(
            student == teacher,
            f"student '{names[0]}' {list(student)} and teacher '{names[1]}' "
            f"{list(teacher)} must have the same shape (same number of classes)",
        )
        self.check(p.temperature > 0, f"temperature must be > 0, got {p.temperature}")
        self.check(0 <= p.alpha <= 1, f"alpha must be in [0, 1], got {p.alpha}")
        softmax_axis = self.param.softmax_param.axis if self.param.HasField("softmax_param") else None
        self.check(
            not p.HasField("axis") or softmax_axis is None or softmax_axis == p.axis,
            f"knowledge_distillation_param axis {p.axis} and softmax_param axis {softmax_axis} differ: give one",
        )
        axis = p.axis if p.HasField("axis") or softmax_axis is None else softmax_axis
        self.axis = canonical_axis(self, axis, len(student))
        self.fork_syntax = is_fork_syntax(p)
        has_label = len(bottom_shapes) == 3
        self.check(
            p.alpha == 1 or has_label or p.mode == KD.LOGIT_MATCHING,
            f"alpha {p.alpha} < 1 mixes in the hard-label loss: give the label as a third bottom",
        )
        if has_label:
            rows = 1
            for i, d in enumerate(student):
                rows *= d if i != self.axis else 1
            label_count = 1
            for d in bottom_shapes[2]:
                label_count *= d
            self.check(
                label_count == rows,
                f"label '{names[2]}' {list(bottom_shapes[2])} has {label_count} "
                f"values; student '{names[0]}' {list(student)} needs {rows} (one per row)",
            )
        loss = self.param.loss_param
        self.ignore_label = loss.ignore_label if loss.HasField("ignore_label") else None
        self.normalization = loss_normalization(loss)
        self.options = dict(
            temperature=p.temperature,
            alpha=p.alpha,
            mode=KD.KDMode.Name(p.mode),
            teacher_is_prob=p.teacher_is_prob,
            normalization=self.normalization,
            axis=self.axis,
            fork_report=self.fork_syntax,
        )
        load_library()  # build errors surface at net set-up, not mid-training
        return [()]

    def forward(self, student, teacher, label=None):
        return distill_loss(student, teacher, label, ignore_label=self.ignore_label, **self.options)

    def extra_repr(self):
        return f"{super().extra_repr()}, {self.options}"
