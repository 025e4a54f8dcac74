"""Learning-rate policies, computed as Caffe's SGDSolver::GetLearningRate computes them.

Caffe works in float (Dtype) except where C++ promotes to double: `pow(float, int)` (step, exp, multistep) is
the double pow, `pow(float, float)` (inv, poly) is powf and `exp(float)` (sigmoid) is expf. The rate is then
stored as a float. We call the C library's powf/expf when we can load it, so the float32 learning rate equals
Caffe's bit for bit (glibc's powf is not always the correctly rounded value); otherwise we round the double
result, which differs from glibc in the last bit for a few arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from pipeline.errors import SolverError
from pipeline.ops.libm import float_libm
from pipeline.proto import caffe_pb2
from pipeline.registry import Registry

f32 = np.float32


def _load_libm():
    try:
        libm = float_libm()
    except OSError:
        return None, None
    return libm.powf, libm.expf


_POWF, _EXPF = _load_libm()


def powf(x, y) -> np.float32:
    if _POWF is not None:
        return f32(_POWF(float(x), float(y)))
    return f32(math.pow(float(x), float(y)))


def expf(x) -> np.float32:
    if _EXPF is not None:
        return f32(_EXPF(float(x)))
    return f32(math.exp(float(x)))


class LrState:
    """What a policy reads and may advance: Caffe's iter_ and current_step_ (multistep keeps its position)."""

    def __init__(self, iter: int = 0, current_step: int = 0):
        self.iter = iter
        self.current_step = current_step


Policy = Callable[[caffe_pb2.SolverParameter, LrState], np.float32]
POLICIES: Registry[Policy] = Registry("lr_policy")


def register_policy(name: str):
    return POLICIES.register(name)


def _need_gamma(p: caffe_pb2.SolverParameter) -> None:
    if p.gamma < 0:
        raise SolverError(f"lr_policy '{p.lr_policy}' requires gamma >= 0, got {p.gamma:g}")


def _need_stepsize(p: caffe_pb2.SolverParameter) -> None:
    if p.stepsize <= 0:
        raise SolverError(f"lr_policy '{p.lr_policy}' requires stepsize > 0, got {p.stepsize}")


def _double_times(base_lr: float, factor: float) -> np.float32:
    # float * double is done in double, then stored into the float `rate`.
    return f32(float(f32(base_lr)) * factor)


@register_policy("fixed")
def fixed(p, s):
    return f32(p.base_lr)


@register_policy("step")
def step(p, s):
    _need_stepsize(p)
    s.current_step = s.iter // p.stepsize
    _need_gamma(p)
    return _double_times(p.base_lr, math.pow(float(f32(p.gamma)), s.current_step))


@register_policy("exp")
def exp(p, s):
    _need_gamma(p)
    return _double_times(p.base_lr, math.pow(float(f32(p.gamma)), s.iter))


@register_policy("inv")
def inv(p, s):
    _need_gamma(p)
    base = f32(1) + f32(p.gamma) * f32(s.iter)
    return f32(p.base_lr) * powf(base, -f32(p.power))


@register_policy("multistep")
def multistep(p, s):
    # Caffe moves at most one step per call, so a resumed run catches up one step per iteration.
    if s.current_step < len(p.stepvalue) and s.iter >= p.stepvalue[s.current_step]:
        s.current_step += 1
        from pipeline.glog import get_logger

        get_logger().info("MultiStep Status: Iteration %d, step = %d", s.iter, s.current_step)
    _need_gamma(p)
    return _double_times(p.base_lr, math.pow(float(f32(p.gamma)), s.current_step))


@register_policy("poly")
def poly(p, s):
    if p.max_iter <= 0:
        raise SolverError(f"lr_policy 'poly' requires max_iter > 0, got {p.max_iter}")
    return f32(p.base_lr) * powf(f32(1) - f32(s.iter) / f32(p.max_iter), f32(p.power))


@register_policy("sigmoid")
def sigmoid(p, s):
    _need_gamma(p)
    _need_stepsize(p)
    e = expf(-f32(p.gamma) * (f32(s.iter) - f32(p.stepsize)))
    return f32(p.base_lr) * (f32(1) / (f32(1) + e))


def known_policies() -> list[str]:
    return POLICIES.keys()


def check_policy(param: caffe_pb2.SolverParameter) -> None:
    if param.lr_policy not in POLICIES:
        raise SolverError(f"unknown lr_policy '{param.lr_policy}'. Known policies: {', '.join(known_policies())}")


def learning_rate(param: caffe_pb2.SolverParameter, state: LrState) -> np.float32:
    """The float32 rate for iteration `state.iter` (may advance `state.current_step`, as Caffe does)."""
    check_policy(param)
    with np.errstate(over="ignore", under="ignore"):
        return POLICIES.get(param.lr_policy)(param, state)
