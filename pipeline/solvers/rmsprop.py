"""RMSProp, as Caffe's RMSPropSolver: history = rms_decay * history + (1 - rms_decay) * g^2;
update = local_rate * g / (sqrt(history) + delta)."""

from __future__ import annotations

import numpy as np

from pipeline.errors import SolverError
from pipeline.ops.caffe_math import caffe_axpby, caffe_sqrt, caffe_square
from pipeline.solvers.registry import register_solver
from pipeline.solvers.sgd import SGDSolver

f32 = np.float32


@register_solver("RMSProp")
class RMSPropSolver(SGDSolver):
    def check_hyperparameters(self):
        p = self.param
        if p.momentum != 0:
            raise SolverError(f"momentum cannot be used with RMSProp (got momentum {p.momentum:g}; set 0)")
        if not 0 <= p.rms_decay <= 1:
            raise SolverError(f"rms_decay must be in [0, 1], got {p.rms_decay:g}")

    def compute_update_value(self, i, diff, local_rate):
        decay = f32(self.param.rms_decay)
        history = self.history[i]
        caffe_axpby(float(f32(1) - decay), caffe_square(diff), float(decay), history)
        update = caffe_sqrt(history).add_(float(f32(self.param.delta)))
        return diff.div_(update).mul_(float(local_rate))
