"""Nesterov's accelerated gradient, as Caffe's NesterovSolver: the step back to the old history, then over."""

from __future__ import annotations

import numpy as np

from pipeline.solvers.registry import register_solver
from pipeline.solvers.sgd import SGDSolver

f32 = np.float32


@register_solver("Nesterov")
class NesterovSolver(SGDSolver):
    def compute_update_value(self, i, diff, local_rate):
        momentum = f32(self.param.momentum)
        history = self.history[i]
        previous = history.clone()
        history.mul_(float(momentum)).add_(diff * float(local_rate))
        # update = (1 + momentum) * history - momentum * previous
        return (history * float(f32(1) + momentum)).add_(previous * float(-momentum))
