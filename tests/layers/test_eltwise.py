"""Eltwise PROD / SUM / MAX: values, Caffe's gradient routing (MAX ties, unstable PROD), gradcheck, bad input."""

import itertools

import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError

SHAPE = (2, 3, 4)


def layer_for(body, n):
    return single_layer_net(body, {f"b{i}": SHAPE for i in range(n)}).layer("under_test")


def leaves(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(n)]


@pytest.mark.parametrize("n,stable", list(itertools.product([2, 3, 4], ["true", "false"])))
def test_prod_values_and_gradients(n, stable):
    body = f'type: "Eltwise" eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}'
    xs = leaves(n)
    top = layer_for(body, n)(*xs)
    torch.testing.assert_close(top, torch.stack(xs).prod(0))
    check_layer_gradients(body, {f"b{i}": SHAPE for i in range(n)})


def test_unstable_prod_gradient_is_top_over_bottom_even_at_zero():
    body = 'type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }'
    a, b = leaves(2)
    with torch.no_grad():
        a[0, 0, 0] = 0.0
    layer_for(body, 2)(a, b).sum().backward()
    assert torch.isnan(a.grad[0, 0, 0])  # Caffe: 0 / 0
    torch.testing.assert_close(b.grad, a.detach())
    stable_a, stable_b = leaves(2)
    with torch.no_grad():
        stable_a[0, 0, 0] = 0.0
    layer_for('type: "Eltwise" eltwise_param { operation: PROD }', 2)(stable_a, stable_b).sum().backward()
    assert stable_a.grad[0, 0, 0] == stable_b[0, 0, 0]


@pytest.mark.parametrize("n,coeffs", [(2, []), (3, []), (2, [1.0, -0.5]), (3, [0.5, 2.0, -1.0])])
def test_sum_with_coefficients(n, coeffs):
    fields = " ".join(f"coeff: {c}" for c in coeffs)
    body = f'type: "Eltwise" eltwise_param {{ operation: SUM {fields} }}'
    xs = leaves(n)
    top = layer_for(body, n)(*xs)
    weights = coeffs or [1.0] * n
    torch.testing.assert_close(top, sum(c * x for c, x in zip(weights, xs)))
    top.sum().backward()
    for c, x in zip(weights, xs):
        torch.testing.assert_close(x.grad, torch.full_like(x, c))
    check_layer_gradients(body, {f"b{i}": SHAPE for i in range(n)})


def test_default_operation_is_sum():
    xs = leaves(2)
    torch.testing.assert_close(layer_for('type: "Eltwise"', 2)(*xs), xs[0] + xs[1])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_max_values_and_gradients(n):
    body = 'type: "Eltwise" eltwise_param { operation: MAX }'
    xs = leaves(n)
    top = layer_for(body, n)(*xs)
    torch.testing.assert_close(top, torch.stack(xs).max(0).values)
    check_layer_gradients(body, {f"b{i}": SHAPE for i in range(n)})


def test_max_ties_follow_caffe():
    # Bottoms 0 and 1 compare with `>`: a tie goes to bottom 1. Later bottoms win only when strictly larger.
    a, b, c = (torch.tensor([1.0, 2.0, 0.0, 5.0], dtype=torch.float64, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        b.copy_(torch.tensor([1.0, 1.0, 3.0, 5.0]))
        c.copy_(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    layer = single_layer_net(
        'type: "Eltwise" eltwise_param { operation: MAX }', {"a": (4,), "b": (4,), "c": (4,)}
    ).layer("under_test")
    top = layer(a, b, c)
    top.backward(torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64))
    assert top.tolist() == [1.0, 2.0, 3.0, 6.0]
    assert a.grad.tolist() == [0.0, 20.0, 0.0, 0.0]
    assert b.grad.tolist() == [10.0, 0.0, 30.0, 0.0]
    assert c.grad.tolist() == [0.0, 0.0, 0.0, 40.0]


@pytest.mark.parametrize(
    "body,shapes,message",
    [
        ('type: "Eltwise"', {"a": (2, 3), "b": (2, 4)}, r"'b' \[2, 4\].*'a' \[2, 3\]"),
        ('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', {"a": (2,), "b": (2,)}, "only"),
        ('type: "Eltwise" eltwise_param { coeff: 1 }', {"a": (2,), "b": (2,)}, "one per bottom"),
        ('type: "Eltwise"', {"a": (2,)}, "bottom"),
    ],
)
def test_bad_eltwise(body, shapes, message):
    with pytest.raises(NetBuildError, match=message):
        single_layer_net(body, shapes)
