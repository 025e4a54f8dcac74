"""Reduction (SUM/ASUM/SUMSQ/MEAN, axis, coeff) and MVN (Caffe's eps-on-std forward and its backward formula)."""

import itertools

import numpy as np
import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError

OPS = {"SUM": lambda x: x, "ASUM": np.abs, "SUMSQ": np.square, "MEAN": lambda x: x}


@pytest.mark.parametrize("op,axis,coeff", list(itertools.product(OPS, [0, 1, 2, -1], [1.0, 0.5, -2.0])))
def test_reduction_values_and_gradients(op, axis, coeff):
    shape = (2, 3, 4)
    body = f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}'
    net = single_layer_net(body, {"x": shape})
    start = axis % 3
    assert net.blob_shapes["top0"] == shape[:start]
    x = torch.randn(shape, dtype=torch.float64)
    top = net.layer("under_test")(x)
    reduce = np.mean if op == "MEAN" else np.sum
    expected = coeff * reduce(OPS[op](x.numpy()), axis=tuple(range(start, 3)))
    assert top.shape == shape[:start]
    np.testing.assert_allclose(top.numpy(), expected, rtol=1e-12)
    check_layer_gradients(body, {"x": shape})


def test_reduction_defaults_to_sum_over_everything():
    net = single_layer_net('type: "Reduction"', {"x": (2, 3)})
    x = torch.randn(2, 3, dtype=torch.float64)
    assert net.blob_shapes["top0"] == ()
    torch.testing.assert_close(net.layer("under_test")(x), x.sum())


def test_asum_gradient_at_zero_is_zero():
    layer = single_layer_net('type: "Reduction" reduction_param { operation: ASUM }', {"x": (3,)}).layer("under_test")
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    layer(x).backward()
    assert x.grad.tolist() == [-1.0, 0.0, 1.0]


def test_reduction_bad_axis():
    with pytest.raises(NetBuildError, match="axis"):
        single_layer_net('type: "Reduction" reduction_param { axis: 3 }', {"x": (2, 3)})


# ----- MVN -------------------------------------------------------------------------------------------------------
def caffe_mvn(x, normalize_variance, across_channels, eps, dy):
    """Independent numpy version of Caffe's MVNLayer forward and backward (float64)."""
    groups = x.shape[0] if across_channels or x.ndim == 1 else x.shape[0] * x.shape[1]
    rows, g = x.reshape(groups, -1), dy.reshape(groups, -1)
    centred = rows - rows.mean(1, keepdims=True)
    if not normalize_variance:
        return centred.reshape(x.shape), (g - g.mean(1, keepdims=True)).reshape(x.shape)
    denom = np.sqrt((centred**2).mean(1, keepdims=True)) + eps
    y = centred / denom
    dx = (g - g.mean(1, keepdims=True) - y * (y * g).mean(1, keepdims=True)) / denom
    return y.reshape(x.shape), dx.reshape(x.shape)


@pytest.mark.parametrize(
    "normalize,across,eps,shape",
    list(itertools.product([True, False], [True, False], [1e-9, 0.1], [(2, 3, 4, 5), (2, 3, 4), (3, 5)])),
)
def test_mvn_matches_caffe_forward_and_backward(normalize, across, eps, shape):
    body = (
        f'type: "MVN" mvn_param {{ normalize_variance: {str(normalize).lower()} '
        f"across_channels: {str(across).lower()} eps: {eps} }}"
    )
    layer = single_layer_net(body, {"x": shape}).layer("under_test")
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64) + 1).requires_grad_(True)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    top = layer(x)
    top.backward(dy)
    # eps travels through the float32 proto field: use the same value in the reference.
    y_ref, dx_ref = caffe_mvn(x.detach().numpy(), normalize, across, float(np.float32(eps)), dy.numpy())
    np.testing.assert_allclose(top.detach().numpy(), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), dx_ref, rtol=1e-10, atol=1e-12)
    if eps < 1e-6 or not normalize:
        # With a tiny eps Caffe's backward is the derivative, so the numeric check applies.
        check_layer_gradients(body, {"x": shape})


def test_mvn_large_eps_backward_is_caffes_not_the_derivative():
    body = 'type: "MVN" mvn_param { eps: 0.5 }'
    layer = single_layer_net(body, {"x": (1, 1, 6)}).layer("under_test")
    x = torch.randn(1, 1, 6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(1, 1, 6, dtype=torch.float64)
    (ours,) = torch.autograd.grad(layer(x), x, dy)
    centred = x - x.mean()
    true_y = centred / ((centred**2).mean().sqrt() + 0.5)
    (true,) = torch.autograd.grad(true_y, x, dy)
    assert not torch.allclose(ours, true)


def test_mvn_rejects_more_than_four_axes():
    with pytest.raises(NetBuildError, match="1 to 4 axes"):
        single_layer_net('type: "MVN"', {"x": (1, 2, 3, 4, 5)})
