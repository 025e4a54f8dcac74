"""The transfer tools' own prototxt messages: a layer-at-a-time schedule and the state file of its run.

Declared in pipeline/proto/schedule.proto (package caffe_pipeline.transfer, importing caffe.proto for
SolverParameter, FillerParameter and KnowledgeDistillationParameter); `make proto` generates schedule_pb2.py.

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

from pipeline.proto.schedule_pb2 import AuxHead, Schedule, Stage, StageState, State

__all__ = ["AuxHead", "Schedule", "Stage", "StageState", "State"]
