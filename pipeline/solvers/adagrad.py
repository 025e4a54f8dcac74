"""AdaGrad, as Caffe's AdaGradSolver: history += g^2; update = local_rate * g / (sqrt(history) + delta)."""

from __future__ import annotations

import numpy as np

from pipeline.errors import SolverError
from pipeline.ops.caffe_math import caffe_sqrt, caffe_square
from pipeline.solvers.registry import register_solver
from pipeline.solvers.sgd import SGDSolver

f32 = np.float32


@register_solver("AdaGrad")
class AdaGradSolver(SGDSolver):
    def check_hyperparameters(self):
        if self.param.momentum != 0:
            raise SolverError(f"momentum cannot be used with AdaGrad (got momentum {self.param.momentum:g}; set 0)")

    def compute_update_value(self, i, diff, local_rate):
        history = self.history[i]
        history.add_(caffe_square(diff))
        update = caffe_sqrt(history).add_(float(f32(self.param.delta)))
        return diff.div_(update).mul_(float(local_rate))
