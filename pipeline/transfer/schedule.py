"""Layer-at-a-time schedules: read a `.schedule` prototxt, check it against the net, and plan each stage's nets.

A stage makes the layers it names trainable (every other layer gets lr_mult 0 in that stage's copy of the net),
optionally appends a temporary auxiliary head (classifier or distillation loss) and switches the net's own losses
off, and overrides solver fields (max_iter, base_lr, anything in `solver { }`). Everything is checked before any
training starts: unknown layers, layers without parameters, missing blobs, a stage that trains nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.proto import caffe_pb2
from pipeline.text.netspec import filter_net
from pipeline.text.prototxt import parse_text, read_text
from pipeline.transfer import netedit
from pipeline.transfer.netedit import NetInfo, TransferError
from pipeline.transfer.schema import Schedule

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class StagePlan:
    index: int
    name: str
    trainable: list[str] | None  # None: every layer the net lets learn
    solver_overrides: caffe_pb2.SolverParameter
    train_net: caffe_pb2.NetParameter
    test_nets: list[caffe_pb2.NetParameter]
    aux_head: str | None = None  # the prefix of the head's layers
    silenced: list[str] = field(default_factory=list)

    @property
    def max_iter(self) -> int:
        return self.solver_overrides.max_iter


def parse_schedule(text: str, path: str = "<schedule>") -> Schedule:
    return parse_text(text, Schedule(), path)


def read_schedule(path: str | Path, variables: dict | None = None) -> Schedule:
    """A schedule file (may be a Jinja template, like every prototxt here)."""
    if not Path(path).is_file():
        raise TransferError(f"schedule file '{path}' not found")
    return parse_schedule(read_text(path, variables), str(path))


def digest(schedule: Schedule) -> str:
    return hashlib.sha256(schedule.SerializeToString(deterministic=True)).hexdigest()[:16]


def merge_over(base: caffe_pb2.SolverParameter, overrides: caffe_pb2.SolverParameter) -> caffe_pb2.SolverParameter:
    """`base` with every field set in `overrides` replaced (repeated fields replaced whole, not appended)."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(base)
    for descriptor, value in overrides.ListFields():
        if descriptor.is_repeated:
            out.ClearField(descriptor.name)
            getattr(out, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(out, descriptor.name).CopyFrom(value)
        else:
            setattr(out, descriptor.name, value)
    return out


def _check_stage_fields(schedule: Schedule) -> None:
    if not schedule.stage:
        raise TransferError("the schedule has no stage")
    seen = set()
    for i, stage in enumerate(schedule.stage):
        label = f"schedule stage #{i + 1}" + (f" '{stage.name}'" if stage.name else "")
        if not stage.name or not _NAME.fullmatch(stage.name):
            raise TransferError(f"{label}: needs a name of letters, digits, '_', '.' or '-' (used in snapshot names)")
        if stage.name in seen:
            raise TransferError(f"{label}: the stage name is used twice")
        seen.add(stage.name)
        if not stage.train and not stage.train_all:
            raise TransferError(f'{label}: trains nothing: name layers with `train: "..."` or set `train_all: true`')
        if stage.train and stage.train_all:
            raise TransferError(f"{label}: give either `train` layers or `train_all: true`, not both")
        iters = stage.max_iter if stage.HasField("max_iter") else stage.solver.max_iter
        if iters <= 0:
            raise TransferError(f"{label}: needs `max_iter` (its number of iterations), a positive number")
        if stage.HasField("base_lr") and stage.base_lr < 0:
            raise TransferError(f"{label}: base_lr must not be negative, got {stage.base_lr}")


def _test_blobs(net_param: caffe_pb2.NetParameter) -> set[str]:
    return netedit.produced_blobs(filter_net(net_param, net_param.state))


def compile_schedule(
    schedule: Schedule,
    train_net: caffe_pb2.NetParameter,
    test_nets: list[caffe_pb2.NetParameter] = (),
    info: NetInfo | None = None,
) -> list[StagePlan]:
    """Check `schedule` against the train net (probed once if `info` is not given) and plan every stage."""
    _check_stage_fields(schedule)
    info = info or netedit.probe(train_net)
    plans = []
    for i, stage in enumerate(schedule.stage):
        what = f"schedule stage '{stage.name}'"
        trainable = None if stage.train_all else netedit.resolve_layers(stage.train, info, what)
        train = netedit.freeze(train_net, trainable, info, schedule.freeze_batchnorm_stats)
        tests = [netedit.freeze(t, None) for t in test_nets]
        overrides = caffe_pb2.SolverParameter()
        overrides.CopyFrom(stage.solver)
        if stage.HasField("max_iter"):
            overrides.max_iter = stage.max_iter
        if stage.HasField("base_lr"):
            overrides.base_lr = stage.base_lr
        plan = StagePlan(i, stage.name, trainable, overrides, train, tests)
        if stage.HasField("aux_head"):
            _plan_aux_head(plan, stage, info)
        plans.append(plan)
    return plans


def _plan_aux_head(plan: StagePlan, stage, info: NetInfo) -> None:
    head = stage.aux_head
    what = f"schedule stage '{stage.name}' aux_head"
    if head.bottom:
        bottom = head.bottom
    elif plan.trainable:
        bottom = info.layers[plan.trainable[-1]].tops[-1]
    else:
        raise TransferError(f"{what}: a `train_all` stage must name the head's `bottom` blob")
    netedit.require_blob(bottom, info, what)
    num_output = head.num_output
    if head.teacher:
        shape = netedit.require_blob(head.teacher, info, f"{what} teacher")
        axis = head.distill_param.axis if head.distill_param.HasField("axis") else 1
        if not num_output:
            num_output = shape[axis] if len(shape) > axis else 0
    if not num_output:
        raise TransferError(f"{what}: needs num_output (the number of classes of the head)")
    label = head.label or None
    needs_label = not head.teacher or (head.distill_param.HasField("alpha") and head.distill_param.alpha < 1)
    if label and label not in info.blob_shapes:
        if needs_label:
            netedit.require_blob(label, info, f"{what} label")
        label = None
    prefix = f"aux_{stage.name}"
    taken = [n for n in info.layers if n.startswith(prefix + "_")]
    if taken:
        raise TransferError(f"{what}: the net already has layers named like the head's ({', '.join(taken)})")
    kwargs = dict(
        label=label,
        teacher=head.teacher or None,
        distill_param=head.distill_param if head.HasField("distill_param") else None,
        weight_filler=head.weight_filler if head.HasField("weight_filler") else None,
        loss_weight=head.loss_weight,
    )
    net = plan.train_net
    if not stage.keep_net_loss:
        net, plan.silenced = netedit.silence_losses(net)
    plan.train_net = netedit.add_aux_head(net, prefix, bottom, num_output, **kwargs)
    tests = []
    for test in plan.test_nets:
        blobs = _test_blobs(test)
        needed = [bottom] + ([head.teacher] if head.teacher else [])
        if all(b in blobs for b in needed):
            test_kwargs = dict(kwargs, label=label if label in blobs else None)
            test = netedit.add_aux_head(test, prefix, bottom, num_output, **test_kwargs)
        tests.append(test)
    plan.test_nets = tests
    plan.aux_head = prefix
