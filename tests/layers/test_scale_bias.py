"""Scale and Bias: alignment (axis, num_axes, scalar), learned blob vs second bottom, bias_term, blob order,
default fillers, float64 gradchecks, and shape errors."""

import itertools

import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError

X = (2, 3, 4, 5)
FILLER = 'filler { type: "uniform" min: 0.5 max: 1.5 }'
BIAS_FILLER = 'bias_filler { type: "uniform" min: -0.5 max: 0.5 }'
# (axis, num_axes) -> the learned blob's shape for X
ALIGNMENTS = {(1, 1): (3,), (0, 2): (2, 3), (1, 2): (3, 4), (-1, 1): (5,), (2, -1): (4, 5), (1, 0): (), (0, -1): X}


def scale_body(axis, num_axes, bias_term=False):
    bias = f" bias_term: true {BIAS_FILLER}" if bias_term else ""
    return f'type: "Scale" scale_param {{ axis: {axis} num_axes: {num_axes} {FILLER}{bias} }}'


def bias_body(axis, num_axes):
    return (
        f'type: "Bias" bias_param {{ axis: {axis} num_axes: {num_axes} filler {{ type: "uniform" min: -1 max: 1 }} }}'
    )


def expand(operand, axis):
    """Reference broadcasting: the operand's axes at x's axes axis.., singleton elsewhere."""
    if operand.dim() == 0:
        return operand
    return operand.reshape((1,) * axis + tuple(operand.shape) + (1,) * (len(X) - axis - operand.dim()))


@pytest.mark.parametrize("alignment, bias_term", list(itertools.product(ALIGNMENTS, [False, True])))
def test_scale_learned_blob(alignment, bias_term):
    axis, num_axes = alignment
    net = single_layer_net(scale_body(axis, num_axes, bias_term), {"x": X})
    layer = net.layer("under_test")
    shape = ALIGNMENTS[alignment]
    assert [tuple(b.shape) for b in layer.blobs] == [shape] * (2 if bias_term else 1)
    x = torch.randn(X, dtype=torch.float64)
    start = axis % len(X) if shape else 0
    expected = x * expand(layer.weight, start) + (expand(layer.bias, start) if bias_term else 0)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    check_layer_gradients(scale_body(axis, num_axes, bias_term), {"x": X})


@pytest.mark.parametrize("alignment", list(ALIGNMENTS))
def test_bias_learned_blob(alignment):
    axis, num_axes = alignment
    net = single_layer_net(bias_body(axis, num_axes), {"x": X})
    layer = net.layer("under_test")
    shape = ALIGNMENTS[alignment]
    assert [tuple(b.shape) for b in layer.blobs] == [shape]
    x = torch.randn(X, dtype=torch.float64)
    start = axis % len(X) if shape else 0
    torch.testing.assert_close(layer(x), x + expand(layer.bias, start), rtol=0, atol=0)
    check_layer_gradients(bias_body(axis, num_axes), {"x": X})


# (axis, second bottom's shape)
SECOND_BOTTOMS = [(1, (3,)), (0, (2, 3)), (2, (4, 5)), (1, ()), (-2, (4,)), (1, (3, 4, 5)), (0, X)]


@pytest.mark.parametrize("kind, case", list(itertools.product(["Scale", "Bias"], SECOND_BOTTOMS)))
def test_second_bottom_operand(kind, case):
    axis, shape = case
    param = "scale_param" if kind == "Scale" else "bias_param"
    body = f'type: "{kind}" {param} {{ axis: {axis} }}'
    net = single_layer_net(body, {"x": X, "s": shape})
    layer = net.layer("under_test")
    assert layer.blobs == []
    x, s = torch.randn(X, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    start = axis % len(X) if shape else 0
    expected = x * expand(s, start) if kind == "Scale" else x + expand(s, start)
    torch.testing.assert_close(layer(x, s), expected, rtol=0, atol=0)
    check_layer_gradients(body, {"x": X, "s": shape})  # the second bottom gets a diff too


@pytest.mark.parametrize("axis, shape", [(1, (3,)), (0, (2, 3)), (1, ())])
def test_scale_second_bottom_with_bias_term(axis, shape):
    # Caffe gives the bias as many axes as the scale bottom, from the same axis; it is then blob 0.
    body = f'type: "Scale" scale_param {{ axis: {axis} bias_term: true {BIAS_FILLER} }}'
    net = single_layer_net(body, {"x": X, "s": shape})
    layer = net.layer("under_test")
    assert [tuple(b.shape) for b in layer.blobs] == [shape]
    assert layer.blobs[0] is layer.bias
    check_layer_gradients(body, {"x": X, "s": shape})


def test_default_fillers():
    scale = single_layer_net('type: "Scale" scale_param { bias_term: true }', {"x": X}).layer("under_test")
    assert torch.all(scale.weight == 1) and torch.all(scale.bias == 0)
    bias = single_layer_net('type: "Bias"', {"x": X}).layer("under_test")
    assert torch.all(bias.bias == 0)


def test_scale_parameters_learn():
    net = single_layer_net(scale_body(1, 1, True), {"x": X})
    assert [(p.layer, p.index) for p in net.learnable_params] == [("under_test", 0), ("under_test", 1)]


@pytest.mark.parametrize(
    "kind, param, bottoms, message",
    [
        ("Scale", "num_axes: -2", {"x": X}, "num_axes must be"),
        ("Bias", "num_axes: -2", {"x": X}, "num_axes must be"),
        ("Scale", "axis: 3 num_axes: 2", {"x": X}, "extends past"),
        ("Bias", "axis: 2 num_axes: 3", {"x": X}, "extends past"),
        ("Scale", "axis: 4", {"x": X}, "out of range"),
        ("Bias", "axis: -5", {"x": X}, "out of range"),
        ("Scale", "", {"x": X, "s": (4,)}, "does not match"),
        ("Bias", "axis: 2", {"x": X, "s": (4, 6)}, "does not match"),
        ("Scale", "axis: 3", {"x": X, "s": (5, 1)}, "does not match"),
    ],
)
def test_bad_alignment(kind, param, bottoms, message):
    field = "scale_param" if kind == "Scale" else "bias_param"
    with pytest.raises(NetBuildError, match=message) as info:
        single_layer_net(f'type: "{kind}" {field} {{ {param} }}', bottoms)
    assert "under_test" in str(info.value)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_three_bottoms_refused(kind):
    with pytest.raises(NetBuildError, match="bottom"):
        single_layer_net(f'type: "{kind}"', {"x": X, "a": (3,), "b": (3,)})
