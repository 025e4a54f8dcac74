"""Solver update rules and lr policies against Caffe's formulas, by hand-computed values on a tiny net.

The net: w (1x2, no bias) . x -> EuclideanLoss against t, so the loss is (w.x - t)^2 / 2 and its gradient
is (w.x - t) x. With w = [1, 1], x = [1, 2], t = 0 the first gradient is [3, 6].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from solver_util import make, solver_param

from pipeline.errors import SolverError
from pipeline.proto import caffe_pb2
from pipeline.solvers import known_solvers
from pipeline.solvers.lr_policy import LrState, learning_rate

HAND_NET = """
name: "hand"
layer { name: "in" type: "Input" top: "x" top: "t"
  input_param { shape { dim: 1 dim: 2 } shape { dim: 1 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: LR decay_mult: DECAY }
  inner_product_param { num_output: 1 bias_term: false } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def hand_solver(tmp_path, monkeypatch, w0=(1.0, 1.0), lr_mult=1, decay_mult=1, **fields):
    monkeypatch.chdir(tmp_path)
    net = HAND_NET.replace("LR", str(lr_mult)).replace("DECAY", str(decay_mult))
    fields.setdefault("weight_decay", 0.0)
    fields.setdefault("momentum", 0.0)
    param = solver_param(net=net, **fields)
    del param.test_iter[:]
    param.test_interval = 0
    param.snapshot_after_train = False
    solver = make(param)
    with torch.no_grad():
        solver.net.layer("ip").weight.copy_(torch.tensor([w0]))
    return solver


def hand_step(solver, x=(1.0, 2.0), t=0.0) -> np.ndarray:
    solver.net.clear_param_diffs()
    solver.forward_backward(x=torch.tensor([x]), t=torch.tensor([[t]]))
    solver.apply_update()
    solver.iter += 1
    return solver.net.layer("ip").weight.detach().numpy().ravel().astype(np.float64)


def close(actual, expected, rtol=2e-6):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-7)


def test_every_caffe_solver_type_is_registered():
    assert {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"} <= set(known_solvers())


def test_sgd_momentum(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, base_lr=0.1, momentum=0.9)
    close(hand_step(s), [0.7, 0.4])  # history 0.1 * [3, 6]
    close(hand_step(s), [0.28, -0.44])  # g = [1.5, 3]; history 0.9 * [.3, .6] + 0.1 * g = [.42, .84]


@pytest.mark.parametrize("kind, expected", [("L2", [1.58, 0.19]), ("L1", [1.59, 0.19])])
def test_weight_decay_l2_and_l1(kind, expected, tmp_path, monkeypatch):
    # w = [2, 1]: g = 4 * [1, 2] = [4, 8]; L2 adds 0.1 * w = [.2, .1], L1 adds 0.1 * sign(w) = [.1, .1].
    s = hand_solver(tmp_path, monkeypatch, w0=(2.0, 1.0), base_lr=0.1, weight_decay=0.1, regularization_type=kind)
    close(hand_step(s), expected)


def test_lr_mult_and_decay_mult(tmp_path, monkeypatch):
    # local rate 0.1 * 2, decay 0.1 * 0: w = [1, 1] - 0.2 * [3, 6]
    s = hand_solver(tmp_path, monkeypatch, lr_mult=2, decay_mult=0, base_lr=0.1, weight_decay=0.1)
    close(hand_step(s), [0.4, -0.2])


def test_lr_mult_zero_freezes(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, lr_mult=0, decay_mult=0, base_lr=0.1, momentum=0.9, weight_decay=0.1)
    close(hand_step(s), [1.0, 1.0])
    assert not s.history[0].any()


def test_nesterov(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, type="Nesterov", base_lr=0.1, momentum=0.9)
    close(hand_step(s), [0.43, -0.14])  # h = [.3, .6]; update = 1.9 h - 0.9 * 0
    close(hand_step(s), [0.1585, -0.683])  # g = [.15, .3]; h = [.285, .57]; update = 1.9 h - 0.9 [.3, .6]


def test_adagrad(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, type="AdaGrad", base_lr=0.1, delta=1.0)
    close(hand_step(s), [1 - 0.1 * 3 / 4, 1 - 0.1 * 6 / 7])
    w = [1 - 0.1 * 3 / 4, 1 - 0.1 * 6 / 7]
    g = (w[0] + 2 * w[1]) * np.array([1.0, 2.0])
    h = np.array([9.0, 36.0]) + g * g
    close(hand_step(s), np.array(w) - 0.1 * g / (np.sqrt(h) + 1))


def test_rmsprop(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, type="RMSProp", base_lr=0.1, rms_decay=0.9, delta=1.0)
    h = 0.1 * np.array([9.0, 36.0])
    close(hand_step(s), 1 - 0.1 * np.array([3.0, 6.0]) / (np.sqrt(h) + 1))


def test_adadelta(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, type="AdaDelta", base_lr=0.1, momentum=0.9, delta=1.0)
    g = np.array([3.0, 6.0])
    eg = 0.1 * g * g
    step = g * np.sqrt(1.0 / (eg + 1.0))  # E[dx^2] is still 0
    close(hand_step(s), 1 - 0.1 * step)
    np.testing.assert_allclose(s.history[1].numpy().ravel(), 0.1 * step * step, rtol=2e-6)


def test_adam(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, type="Adam", base_lr=0.1, momentum=0.9, momentum2=0.999, delta=1e-8)
    close(hand_step(s), [0.9, 0.9], rtol=1e-5)  # Adam's first step is lr * sign(g)
    m = 0.1 * np.array([3.0, 6.0])
    v = 0.001 * np.array([9.0, 36.0])
    g = (0.9 + 2 * 0.9) * np.array([1.0, 2.0])
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    correction = math.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    close(hand_step(s), 0.9 - 0.1 * correction * m / (np.sqrt(v) + 1e-8), rtol=1e-5)


@pytest.mark.parametrize(
    "type_name, fields",
    [("AdaGrad", {"momentum": 0.9}), ("RMSProp", {"momentum": 0.5}), ("RMSProp", {"rms_decay": 1.5})],
)
def test_rule_sanity_checks(type_name, fields, tmp_path, monkeypatch):
    with pytest.raises(SolverError):
        hand_solver(tmp_path, monkeypatch, type=type_name, base_lr=0.1, **fields)


def test_deprecated_solver_type_enum(tmp_path, monkeypatch):
    s = hand_solver(tmp_path, monkeypatch, solver_type=caffe_pb2.SolverParameter.NESTEROV, base_lr=0.1)
    assert type(s).__name__ == "NesterovSolver" and s.param.type == "Nesterov"


def test_unknown_solver_type(tmp_path, monkeypatch):
    with pytest.raises(SolverError, match="unknown solver type 'Sgd'.*Known types"):
        hand_solver(tmp_path, monkeypatch, type="Sgd", base_lr=0.1)


# ----- lr policies --------------------------------------------------------------------------------------
def lr(policy: str, iters, **fields):
    param = caffe_pb2.SolverParameter(lr_policy=policy, base_lr=0.01, **fields)
    state = LrState()
    out = []
    for i in iters:
        state.iter = i
        out.append(float(learning_rate(param, state)))
    return out


@pytest.mark.parametrize(
    "policy, fields, iters, expected",
    [
        ("fixed", {}, [0, 1000], [0.01, 0.01]),
        ("step", {"gamma": 0.1, "stepsize": 10}, [0, 9, 10, 25], [0.01, 0.01, 0.001, 0.0001]),
        ("exp", {"gamma": 0.5}, [0, 1, 3], [0.01, 0.005, 0.00125]),
        ("inv", {"gamma": 0.1, "power": 1.0}, [0, 10, 30], [0.01, 0.005, 0.0025]),
        ("multistep", {"gamma": 0.1, "stepvalue": [5, 8]}, range(10), [0.01] * 5 + [0.001] * 3 + [0.0001] * 2),
        ("poly", {"power": 2.0, "max_iter": 100}, [0, 50, 100], [0.01, 0.0025, 0.0]),
        ("sigmoid", {"gamma": 0.1, "stepsize": 10}, [10, 20], [0.005, 0.01 / (1 + math.exp(-1))]),
    ],
)
def test_lr_policy_hand_values(policy, fields, iters, expected):
    np.testing.assert_allclose(lr(policy, iters, **fields), expected, rtol=1e-6)


def test_lr_is_caffes_float32():
    # Caffe's inv: float base_lr * powf(1 + gamma * iter, -power), as stored in the reference traces.
    assert lr("inv", [188], gamma=1e-4, power=0.75) == [float(np.float32(0.00986128))]


def test_multistep_moves_one_step_per_iteration_when_resumed():
    param = caffe_pb2.SolverParameter(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[2, 4])
    state = LrState(iter=10)
    assert [float(learning_rate(param, state)) for _ in range(3)] == [0.5, 0.25, 0.25]


@pytest.mark.parametrize(
    "policy, fields, message",
    [
        ("sigmoid", {"gamma": -0.05, "stepsize": 100}, "requires gamma >= 0"),
        ("step", {"gamma": 0.1}, "requires stepsize > 0"),
        ("rampup", {}, "unknown lr_policy 'rampup'"),
        ("", {}, "unknown lr_policy ''"),
    ],
)
def test_bad_lr_policy(policy, fields, message):
    with pytest.raises(SolverError, match=message):
        lr(policy, [0], **fields)
