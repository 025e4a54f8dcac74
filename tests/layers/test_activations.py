"""Neuron layers: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold, Swish, Clip.

Float64 gradchecks over parameter grids, Caffe's formulas and diffs at the kinks, and set-up errors.
"""

import itertools
import math

import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError

SHAPE = (2, 3, 4, 5)


def positive(shape=SHAPE, low=0.2, high=2.0, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def run_layer(body, x, phase="TRAIN"):
    """Forward one layer on x (float64) with autograd on x; returns (layer, x leaf, top)."""
    net = single_layer_net(body, {"x": tuple(x.shape)}, phase=phase)
    layer = net.layer("under_test")
    leaf = x.to(torch.float64).clone().requires_grad_(True)
    return layer, leaf, layer(leaf)


def input_grad(body, x, upstream=None):
    _, leaf, y = run_layer(body, x)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    return leaf.grad


BODIES = [
    'type: "ReLU"',
    *[f'type: "ReLU" relu_param {{ negative_slope: {s} }}' for s in (0.1, -0.5)],
    *[f'type: "ELU" elu_param {{ alpha: {a} }}' for a in (1.0, 0.5, 2.0)],
    'type: "Sigmoid"',
    'type: "TanH"',
    'type: "AbsVal"',
    'type: "BNLL"',
    *[f'type: "Swish" swish_param {{ beta: {b} }}' for b in (1.0, 1.5, -0.7)],
    'type: "Clip" clip_param { min: -0.5 max: 0.7 }',
    *[
        f'type: "Power" power_param {{ power: {p} scale: {s} shift: {t} }}'
        for p, s, t in itertools.product((1.0, 2.0, 3.0, 0.0), (1.0, -0.5), (0.0, 1.5))
    ],
    *[
        f'type: "Exp" exp_param {{ base: {b} scale: {s} shift: {t} }}'
        for b, s, t in itertools.product((-1.0, 2.0, 0.5), (1.0, 0.5), (0.0, 0.2))
    ],
]


@pytest.mark.parametrize("body", BODIES)
def test_gradcheck(body):
    check_layer_gradients(body, {"x": SHAPE})


# Powers and logarithms of positive bases only (a fractional power of a negative base is NaN, as in Caffe).
POSITIVE_BODIES = [
    *[
        f'type: "Power" power_param {{ power: {p} scale: {s} shift: {t} }}'
        for p, s, t in itertools.product((0.5, -1.5, 2.5), (1.0, 2.0), (0.0, 0.1))
    ],
    *[
        f'type: "Log" log_param {{ base: {b} scale: {s} shift: {t} }}'
        for b, s, t in itertools.product((-1.0, 10.0, 0.5), (1.0, 2.0), (0.0, 0.5))
    ],
]


@pytest.mark.parametrize("body", POSITIVE_BODIES)
def test_gradcheck_positive_inputs(body):
    check_layer_gradients(body, {"x": SHAPE}, inputs={"x": positive()})


@pytest.mark.parametrize("shared, shape", list(itertools.product([False, True], [(2, 3), (2, 3, 4), SHAPE])))
def test_prelu_gradcheck(shared, shape):
    filler = 'filler { type: "uniform" min: 0.05 max: 0.5 }'
    body = f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} {filler} }}'
    check_layer_gradients(body, {"x": shape})


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_blob_shape_and_default_filler(shared):
    net = single_layer_net(f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} }}', {"x": SHAPE})
    (weight,) = net.layer("under_test").blobs
    assert tuple(weight.shape) == (() if shared else (3,))
    assert torch.all(weight == 0.25)


def test_prelu_forward_formula():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer, _, y = run_layer('type: "PReLU" prelu_param { filler { type: "uniform" min: 0.05 max: 0.5 } }', x)
    slope = layer.weight.detach().view(1, 3, 1, 1)
    torch.testing.assert_close(y, torch.clamp(x, min=0) + slope * torch.clamp(x, max=0), rtol=0, atol=0)


@pytest.mark.parametrize(
    "body, x, expected",
    [
        ('type: "ReLU" relu_param { negative_slope: 0.1 }', [-2.0, 0.0, 3.0], [-0.2, 0.0, 3.0]),
        ('type: "ELU" elu_param { alpha: 0.5 }', [-1.0, 0.0, 2.0], [0.5 * (math.exp(-1) - 1), 0.0, 2.0]),
        ('type: "BNLL"', [-50.0, 0.0, 60.0], [math.log1p(math.exp(-50)), math.log(2), 60.0]),
        (
            'type: "Swish" swish_param { beta: 1.5 }',
            [-1.0, 0.0, 2.0],
            [-1 / (1 + math.exp(1.5)), 0.0, 2 / (1 + math.exp(-3))],
        ),
        ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', [-3.0, -0.5, 0.2, 0.7, 9.0], [-0.5, -0.5, 0.2, 0.7, 0.7]),
        ('type: "Threshold" threshold_param { threshold: 0.3 }', [0.2, 0.3, 0.31, -5.0], [0.0, 0.0, 1.0, 0.0]),
        ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', [-2.0, 0.0, 4.0], [0.0, 1.0, 9.0]),
        ('type: "Power" power_param { power: 0 scale: 3 shift: -2 }', [5.0, -1.0], [1.0, 1.0]),
        ('type: "Power" power_param { power: 2 scale: 0 shift: -3 }', [5.0, -1.0], [9.0, 9.0]),
        ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', [0.0, 2.0], [2.0, 4.0]),
        ('type: "Exp" exp_param { scale: 0.5 shift: 0.2 }', [0.0, 1.0], [math.exp(0.2), math.exp(0.7)]),
        ('type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }', [0.25, 4.75], [0.0, 1.0]),
        ('type: "Log"', [1.0, math.e], [0.0, 1.0]),
    ],
)
def test_forward_values(body, x, expected):
    _, _, y = run_layer(body, torch.tensor([x], dtype=torch.float64))
    torch.testing.assert_close(y.detach(), torch.tensor([expected], dtype=torch.float64))


@pytest.mark.parametrize(
    "body, expected",
    [
        # Caffe's diffs at the kinks (x = 0, and the Clip bounds included).
        ('type: "ReLU"', 0.0),
        ('type: "ReLU" relu_param { negative_slope: 0.1 }', 0.1),
        ('type: "PReLU" prelu_param { filler { type: "constant" value: 0.3 } }', 0.3),
        ('type: "ELU" elu_param { alpha: 0.5 }', 0.5),
        ('type: "AbsVal"', 0.0),
        ('type: "Clip" clip_param { min: 0 max: 1 }', 1.0),
        ('type: "Clip" clip_param { min: -1 max: 0 }', 1.0),
    ],
)
def test_diff_at_zero(body, expected):
    grad = input_grad(body, torch.zeros(1, 2, 3))
    # Slopes are float32 parameters (Caffe's), so compare with the float32 value.
    torch.testing.assert_close(grad, torch.full_like(grad, float(torch.tensor(expected, dtype=torch.float32))))


def test_prelu_slope_diff_ignores_zero_inputs():
    x = torch.tensor([[[-2.0, 0.0, 3.0]]], dtype=torch.float64)
    layer, leaf, y = run_layer('type: "PReLU"', x)
    y.backward(torch.ones_like(y))
    assert layer.weight.grad.item() == -2.0


def test_power_backward_is_caffes_formula():
    # shift 0, power 3: Caffe writes dy/dx = power * y / x, which is 0/0 = NaN at x = 0.
    grad = input_grad('type: "Power" power_param { power: 3 }', torch.tensor([[0.0, 2.0]]))
    assert math.isnan(grad[0, 0]) and grad[0, 1].item() == pytest.approx(12.0)
    # shift != 0: power * scale * y / (shift + scale * x), NaN where the base is 0.
    grad = input_grad('type: "Power" power_param { power: 3 scale: 2 shift: -2 }', torch.tensor([[1.0, 2.0]]))
    assert math.isnan(grad[0, 0]) and grad[0, 1].item() == pytest.approx(24.0)
    # power 2 has its own finite branch; power 1 and a zero diff_scale give a constant.
    assert input_grad('type: "Power" power_param { power: 2 shift: 1 }', torch.tensor([[-1.0]])).item() == 0.0
    assert input_grad('type: "Power" power_param { power: 1 scale: -3 }', torch.tensor([[5.0]])).item() == -3.0
    assert input_grad('type: "Power" power_param { power: 0 scale: 2 }', torch.tensor([[5.0]])).item() == 0.0


def test_threshold_has_no_backward():
    layer, _, y = run_layer('type: "Threshold"', torch.tensor([[-1.0, 0.0, 1.0]]))
    assert not layer.has_backward
    assert y.tolist() == [[0.0, 0.0, 1.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype):
    for body in ['type: "Sigmoid"', 'type: "Power" power_param { power: 2 }', 'type: "Threshold"', 'type: "PReLU"']:
        net = single_layer_net(body, {"x": SHAPE}).to(dtype)
        assert net.layer("under_test")(torch.randn(SHAPE, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize(
    "body, shape, message",
    [
        ('type: "Clip" clip_param { min: 1 max: -1 }', SHAPE, "must not exceed"),
        ('type: "Clip" clip_param { min: 1 }', SHAPE, "needs both min and max"),
        ('type: "Exp" exp_param { base: 0 }', SHAPE, "strictly positive"),
        ('type: "Exp" exp_param { base: -2 }', SHAPE, "strictly positive"),
        ('type: "Log" log_param { base: -3 }', SHAPE, "strictly positive"),
        ('type: "Log" log_param { base: 1 }', SHAPE, "base 1"),
        ('type: "PReLU"', (6,), "at least 2 axes"),
    ],
)
def test_bad_parameters(body, shape, message):
    with pytest.raises(NetBuildError, match=message) as info:
        single_layer_net(body, {"x": shape})
    assert "under_test" in str(info.value)
