"""The fused distillation loss op `torch.ops.caffe_pipeline.distill_loss` and its fake kernels.

The C++ source (`pipeline/csrc/distill.cpp`) defines the schema, a fused CPU kernel, a composite ATen kernel
for CUDA and the autograd (its own backward op); pipeline/ops/build.py compiles it (at `make setup`, else at
first use) and caches it per source, flags, compiler and CPU. The fake kernels, for torch.compile and
torch.export, are registered here.
"""

from __future__ import annotations

import threading

import torch

from pipeline.errors import PipelineError
from pipeline.ops.build import DISTILL, build_op_library

MODES = {"KL": 0, "LOGIT_MATCHING": 1}
NORMALIZATIONS = {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3}
_lock = threading.Lock()
_NO_LABELS = torch.empty(0, dtype=torch.long)
_loaded = False


def load_library() -> None:
    """Compile (first time only) and load the op library, registering fake and autograd kernels."""
    global _loaded
    if _loaded:  # checked before the lock, so compiled (dynamo-traced) callers see a constant
        return
    with _lock:
        if _loaded:
            return
        build_op_library(DISTILL)
        _register_python_kernels()
        _loaded = True


def _register_python_kernels() -> None:
    @torch.library.register_fake("caffe_pipeline::distill_loss")
    def _fake_forward(student, teacher, label, *args):
        return student.new_empty(())

    @torch.library.register_fake("caffe_pipeline::distill_loss_backward")
    def _fake_backward(grad, student, teacher, label, *args):
        return torch.empty_like(student)


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    label: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    mode: str = "KL",
    teacher_is_prob: bool = False,
    ignore_label: int | None = None,
    normalization: str = "VALID",
    axis: int = 1,
    fork_report: bool = False,
) -> torch.Tensor:
    """Distillation loss of student logits against teacher logits (or probabilities), reduced like Caffe.

    `axis` is the class axis; every other position is a row (Caffe's outer x inner). The teacher gets no
    gradient. `label` (one per row) is needed when alpha < 1 or to skip rows equal to `ignore_label`.

    `fork_report` changes only the loss value returned: the public KD fork's (wentianli/knowledge_distillation_caffe,
    KnowledgeDistillationLayer::Forward_cpu), KL with no T^2 and probabilities clamped at FLT_MIN before the log.
    The gradient is T^2 times the KL's in both conventions, as that layer's Backward_cpu.
    """
    load_library()
    if student.shape != teacher.shape:
        raise PipelineError(f"student {list(student.shape)} and teacher {list(teacher.shape)} shapes differ")
    if temperature <= 0:
        raise PipelineError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise PipelineError(f"alpha must be in [0, 1], got {alpha}")
    axis = axis % student.dim()
    classes = student.shape[axis]
    batch = student.shape[0] if axis > 0 else 1
    if student.dim() == 2 and axis == 1:  # the common (N, C) case: no reshaping
        rows_s, rows_t = student, teacher.detach()
    else:
        rows_s = student.movedim(axis, -1).reshape(-1, classes)
        rows_t = teacher.detach().movedim(axis, -1).reshape(-1, classes)
    if label is None:
        label_rows = (
            _NO_LABELS if student.device.type == "cpu" else torch.empty(0, dtype=torch.long, device=student.device)
        )
    else:
        label_rows = label.reshape(-1)
        if label_rows.dtype != torch.long:
            label_rows = label_rows.long()
        if label_rows.numel() != rows_s.shape[0]:
            raise PipelineError(f"{label_rows.numel()} labels for {rows_s.shape[0]} rows of {classes} classes")
    return torch.ops.caffe_pipeline.distill_loss(
        rows_s,
        rows_t,
        label_rows,
        float(temperature),
        float(alpha),
        MODES[mode],
        bool(teacher_is_prob),
        int(ignore_label) if ignore_label is not None else 0,
        ignore_label is not None,
        NORMALIZATIONS[normalization],
        int(batch),
        bool(fork_report),
    )
