"""Nesterov's accelerated gradient, as Caffe's NesterovSolver: the step back to the old history, then over."""

from __future__ import annotations

import numpy as np

from pipeline.ops.caffe_math import caffe_axpby
from pipeline.solvers.registry import register_solver
from pipeline.solvers.sgd import SGDSolver

f32 = np.float32


@register_solver("Nesterov")
class NesterovSolver(SGDSolver):
    def compute_update_value(self, i, diff, local_rate):
        momentum = f32(self.param.momentum)
        history = self.history[i]
        previous = history.clone()
        caffe_axpby(float(local_rate), diff, float(momentum), history)
        # update = (1 + momentum) * history - momentum * previous: the step back, then over
        return caffe_axpby(float(f32(1) + momentum), history, float(-momentum), previous)
