"""The transfer tools' own prototxt messages: a layer-at-a-time schedule and the state file of its run.

They are protobuf messages like Caffe's (text format, comments with `#`), defined here in Python rather than in
caffe.proto, which stays Caffe's schema. They reuse Caffe's messages where one fits: a stage may carry a
`solver { ... }` (caffe.SolverParameter) and an auxiliary head a `weight_filler` and a `distill_param`.

    # runs/vgg.schedule
    stage {
      name: "block1"
      train: "conv1_1"  train: "conv1_2"        # layer names (or glob patterns such as "conv1_*")
      max_iter: 500  base_lr: 0.01
      aux_head { bottom: "pool1" num_output: 10 }
    }
    stage { name: "all" train_all: true max_iter: 2000 base_lr: 0.001 }

Every field is described in README.md ("Layer-at-a-time schedules"); a worked example runnable on the data
`make train` builds: examples/lenet_layerwise.schedule.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pipeline.proto import caffe_pb2

PACKAGE = "caffe_pipeline.transfer"
F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": F.TYPE_STRING,
    "bool": F.TYPE_BOOL,
    "int32": F.TYPE_INT32,
    "uint32": F.TYPE_UINT32,
    "float": F.TYPE_FLOAT,
    "bytes": F.TYPE_BYTES,
    "double": F.TYPE_DOUBLE,
}

# message -> [(field, label, type, default)], numbered 1, 2, ... in order. Types with a dot are messages.
MESSAGES = {
    "Schedule": [
        ("stage", "repeated", ".caffe_pipeline.transfer.Stage", None),
        # Frozen BatchNorm layers use their stored statistics instead of updating them from each batch.
        ("freeze_batchnorm_stats", "optional", "bool", "false"),
    ],
    "Stage": [
        ("name", "optional", "string", None),
        ("train", "repeated", "string", None),
        # Every layer the net itself lets learn (its own lr_mult), e.g. a final fine-tuning stage.
        ("train_all", "optional", "bool", "false"),
        ("max_iter", "optional", "int32", None),
        ("base_lr", "optional", "float", None),
        # Any other solver field for this stage, merged over the solver prototxt (lr_policy, momentum, ...).
        ("solver", "optional", ".caffe.SolverParameter", None),
        ("aux_head", "optional", ".caffe_pipeline.transfer.AuxHead", None),
        # With an auxiliary head the net's own losses are switched off (loss_weight 0) unless this is true.
        ("keep_net_loss", "optional", "bool", "false"),
    ],
    "AuxHead": [
        # Blob the head reads; default: the top of the stage's last trainable layer.
        ("bottom", "optional", "string", None),
        # Outputs of the head's InnerProduct; default with a teacher: the teacher blob's channels.
        ("num_output", "optional", "uint32", None),
        ("label", "optional", "string", '"label"'),
        # A teacher blob (logits, or probabilities with distill_param.teacher_is_prob): the head's loss is
        # KnowledgeDistillation against it instead of SoftmaxWithLoss on the labels.
        ("teacher", "optional", "string", None),
        ("distill_param", "optional", ".caffe.KnowledgeDistillationParameter", None),
        ("weight_filler", "optional", ".caffe.FillerParameter", None),
        ("loss_weight", "optional", "float", "1"),
    ],
    "State": [
        ("schedule_digest", "optional", "string", None),
        ("stage", "repeated", ".caffe_pipeline.transfer.StageState", None),
    ],
    "StageState": [
        ("name", "optional", "string", None),
        ("done", "optional", "bool", "false"),
        # When the stage last started from scratch (seconds since the epoch): older snapshots are not its own.
        ("started_at", "optional", "double", None),
        # The stage's final weights (done) or the snapshot to resume from (not done).
        ("weights", "optional", "string", None),
        ("solverstate", "optional", "string", None),
        ("iter", "optional", "int32", None),
        # The train net's random generator when the stage was stopped (dropout masks continue exactly).
        ("rng_state", "optional", "bytes", None),
    ],
}


def _build():
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("caffe_pipeline_transfer.proto")
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto(
            name="caffe_pipeline_transfer.proto",
            package=PACKAGE,
            syntax="proto2",
            dependency=[caffe_pb2.DESCRIPTOR.name],
        )
        for name, fields in MESSAGES.items():
            message = proto.message_type.add(name=name)
            for number, (field, label, kind, default) in enumerate(fields, 1):
                spec = message.field.add(name=field, number=number)
                spec.label = F.LABEL_REPEATED if label == "repeated" else F.LABEL_OPTIONAL
                if kind.startswith("."):
                    spec.type, spec.type_name = F.TYPE_MESSAGE, kind
                else:
                    spec.type = _SCALARS[kind]
                if default is not None:
                    spec.default_value = default.strip('"')
        pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES}


_CLASSES = _build()
Schedule = _CLASSES["Schedule"]
Stage = _CLASSES["Stage"]
AuxHead = _CLASSES["AuxHead"]
State = _CLASSES["State"]
StageState = _CLASSES["StageState"]
