"""Adam, as Caffe's AdamSolver: m and v (histories i and N + i), bias correction folded into the rate.

correction = sqrt(1 - beta2^t) / (1 - beta1^t) with t = iter + 1, computed in double (C++ promotes
`pow(float, int)`) and stored as float; update = local_rate * correction * m / (sqrt(v) + delta).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.ops.caffe_math import caffe_axpby, caffe_sqrt
from pipeline.solvers.registry import register_solver
from pipeline.solvers.sgd import SGDSolver

f32 = np.float32


@register_solver("Adam")
class AdamSolver(SGDSolver):
    history_per_param = 2

    def compute_update_value(self, i, diff, local_rate):
        beta1, beta2 = f32(self.param.momentum), f32(self.param.momentum2)
        t = self.iter + 1
        correction = f32(math.sqrt(1.0 - math.pow(float(beta2), t)) / (1.0 - math.pow(float(beta1), t)))
        m = self.history[i]
        v = self.history[len(self.params) + i]
        caffe_axpby(float(f32(1) - beta1), diff, float(beta1), m)
        caffe_axpby(float(f32(1) - beta2), diff * diff, float(beta2), v)  # Caffe squares with caffe_mul here
        update = caffe_sqrt(v).add_(float(f32(self.param.delta)))
        return (m / update).mul_(float(f32(local_rate * correction)))
