"""AdaDelta, as Caffe's AdaDeltaSolver (Zeiler 2012, with Caffe's learning rate on top).

Two histories per parameter: E[g^2] (history i) and E[dx^2] (history N + i), both decayed with `momentum`.
update = local_rate * g * sqrt((E[dx^2] + delta) / (E[g^2] + delta)), and E[dx^2] takes the unscaled step.
"""

from __future__ import annotations

import numpy as np

from pipeline.ops.caffe_math import caffe_axpby, caffe_sqrt, caffe_square
from pipeline.solvers.registry import register_solver
from pipeline.solvers.sgd import SGDSolver

f32 = np.float32


@register_solver("AdaDelta")
class AdaDeltaSolver(SGDSolver):
    history_per_param = 2

    def compute_update_value(self, i, diff, local_rate):
        momentum = f32(self.param.momentum)
        delta = float(f32(self.param.delta))
        keep, take = float(momentum), float(f32(1) - momentum)
        grad_sq = self.history[i]
        step_sq = self.history[len(self.params) + i]
        caffe_axpby(take, caffe_square(diff), keep, grad_sq)
        ratio = caffe_sqrt((step_sq + delta).div_(grad_sq + delta))
        diff.mul_(ratio)
        caffe_axpby(take, caffe_square(diff), keep, step_sq)
        return diff.mul_(float(local_rate))
