"""AdaDelta, as Caffe's AdaDeltaSolver (Zeiler 2012, with Caffe's learning rate on top).

Two histories per parameter: E[g^2] (history i) and E[dx^2] (history N + i), both decayed with `momentum`.
update = local_rate * g * sqrt((E[dx^2] + delta) / (E[g^2] + delta)), and E[dx^2] takes the unscaled step.
"""

from __future__ import annotations

import numpy as np

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
        grad_sq.mul_(keep).add_((diff * diff).mul_(take))
        ratio = (step_sq + delta).div_(grad_sq + delta).sqrt_()
        diff.mul_(ratio)
        step_sq.mul_(keep).add_((diff * diff).mul_(take))
        return diff.mul_(float(local_rate))
