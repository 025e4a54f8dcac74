"""Concat, Slice, Reshape, Flatten, Crop, Tile: shapes, values, gradients (float64 gradcheck) and bad input."""

import itertools

import numpy as np
import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string


def run(body, bottoms, n_tops=1):
    """Build a one-layer float64 net for `bottoms` (name -> tensor) and apply the layer; returns (layer, tops)."""
    net = single_layer_net(body, {k: tuple(v.shape) for k, v in bottoms.items()}, n_tops)
    layer = net.layer("under_test")
    out = layer(*[v.double() for v in bottoms.values()])
    return layer, out if isinstance(out, tuple) else (out,)


def shape_of(body, bottoms, n_tops=1):
    return single_layer_net(body, bottoms, n_tops).blob_shapes


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# ----- Concat ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis,n", list(itertools.product([0, 1, 2, -1], [1, 2, 3])))
def test_concat_values_and_gradients(axis, n):
    base = [2, 3, 4]
    shapes = []
    for i in range(n):
        s = list(base)
        s[axis] += i
        shapes.append(tuple(s))
    bottoms = {f"b{i}": rand(*s) for i, s in enumerate(shapes)}
    body = f'type: "Concat" concat_param {{ axis: {axis} }}'
    layer, (top,) = run(body, bottoms)
    expected = np.concatenate([v.numpy() for v in bottoms.values()], axis=axis)
    np.testing.assert_array_equal(top.numpy(), expected)
    assert single_layer_net(body, dict(zip(bottoms, shapes))).blob_shapes["top0"] == expected.shape
    check_layer_gradients(body, dict(zip(bottoms, shapes)))


def test_concat_default_axis_and_legacy_concat_dim():
    shapes = {"a": (2, 3, 4), "b": (2, 5, 4)}
    assert shape_of('type: "Concat"', shapes)["top0"] == (2, 8, 4)
    assert shape_of('type: "Concat" concat_param { concat_dim: 0 }', {"a": (2, 3), "b": (5, 3)})["top0"] == (7, 3)


def test_concat_mismatch_names_both_blobs_and_shapes():
    with pytest.raises(NetBuildError, match=r"'b' \[2, 5, 3\].*'a' \[2, 3, 4\]"):
        shape_of('type: "Concat"', {"a": (2, 3, 4), "b": (2, 5, 3)})
    with pytest.raises(NetBuildError, match=r"'b' \[2, 3\]"):
        shape_of('type: "Concat"', {"a": (2, 3, 4), "b": (2, 3)})


@pytest.mark.parametrize(
    "body",
    [
        'type: "Concat" concat_param { axis: 1 concat_dim: 1 }',
        'type: "Concat" concat_param { concat_dim: 3 }',
        'type: "Concat" concat_param { axis: -4 }',
    ],
)
def test_concat_bad_axis(body):
    with pytest.raises(NetBuildError):
        shape_of(body, {"a": (2, 3, 4), "b": (2, 3, 4)})


# ----- Slice -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis,points", list(itertools.product([0, 1, -1], [[], [1], [1, 3], [2, 3, 5]])))
def test_slice_values_and_gradients(axis, points):
    shape = [6, 6, 6]
    shape[axis] = 6
    n_tops = len(points) + 1 if points else 3
    fields = " ".join(f"slice_point: {p}" for p in points)
    body = f'type: "Slice" slice_param {{ axis: {axis} {fields} }}'
    x = rand(*shape)
    _, tops = run(body, {"x": x}, n_tops)
    cuts = points or [2, 4]
    expected = np.split(x.numpy(), cuts, axis=axis)
    assert len(tops) == len(expected)
    for top, ref in zip(tops, expected):
        np.testing.assert_array_equal(top.numpy(), ref)
    check_layer_gradients(body, {"x": tuple(shape)}, n_tops=n_tops)


def test_slice_legacy_slice_dim_and_single_top():
    shapes = shape_of('type: "Slice" slice_param { slice_dim: 0 slice_point: 1 }', {"x": (3, 2)}, n_tops=2)
    assert shapes["top0"] == (1, 2) and shapes["top1"] == (2, 2)
    _, (top,) = run('type: "Slice"', {"x": rand(2, 3)})
    assert top.shape == (2, 3)


@pytest.mark.parametrize(
    "points,n_tops,message",
    [
        ([3, 2], 3, "strictly increasing"),
        ([0, 2], 3, "strictly increasing"),
        ([2, 2], 3, "strictly increasing"),
        ([2], 3, "one fewer"),
        ([7], 2, "beyond"),
        ([], 4, "evenly"),
    ],
)
def test_slice_bad_points(points, n_tops, message):
    fields = " ".join(f"slice_point: {p}" for p in points)
    with pytest.raises(NetBuildError, match=message):
        shape_of(f'type: "Slice" slice_param {{ {fields} }}', {"x": (2, 6)}, n_tops=n_tops)


# ----- Reshape ---------------------------------------------------------------------------------------------------
RESHAPES = [
    # (bottom, dims, axis, num_axes, expected top)
    ((2, 3, 4, 6), [0, -1, 4], 0, -1, (2, 18, 4)),
    ((2, 3, 4, 6), [2, 2], 2, 1, (2, 3, 2, 2, 6)),
    ((2, 3, 4, 6), [-1], 0, -1, (144,)),
    ((2, 3, 4, 6), [0, 0, -1], 0, -1, (2, 3, 24)),
    ((2, 3, 4, 6), [1], 1, 0, (2, 1, 3, 4, 6)),
    ((2, 3, 4, 6), [-1], -3, 2, (2, 3, 24)),
    ((2, 3, 4, 6), [1, 1], -1, 0, (2, 3, 4, 6, 1, 1)),
    ((2, 3, 4, 6), [], 1, 0, (2, 3, 4, 6)),
    ((6,), [2, -1], 0, -1, (2, 3)),
]


@pytest.mark.parametrize("bottom,dims,axis,num_axes,expected", RESHAPES)
def test_reshape_shapes_values_and_gradients(bottom, dims, axis, num_axes, expected):
    body = (
        'type: "Reshape" reshape_param { shape { '
        + " ".join(f"dim: {d}" for d in dims)
        + f" }} axis: {axis} num_axes: {num_axes} }}"
    )
    assert shape_of(body, {"x": bottom})["top0"] == expected
    x = rand(*bottom)
    _, (top,) = run(body, {"x": x})
    np.testing.assert_array_equal(top.numpy(), x.numpy().reshape(expected))
    check_layer_gradients(body, {"x": bottom})


def test_reshape_follows_a_new_batch_size_at_forward():
    layer, _ = run('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', {"x": rand(2, 3, 4)})
    assert layer(rand(5, 3, 4)).shape == (5, 12)


@pytest.mark.parametrize(
    "dims,axis,num_axes,message",
    [
        ([-1, -1], 0, -1, "more than one -1"),
        ([5, -1], 0, -1, "not divisible"),
        ([5, 5], 0, -1, "elements"),
        ([0, 0, 0, 0], 1, -1, "no axis"),
        ([2], 5, -1, "out of range"),
        ([2], 1, 4, "beyond"),
        ([2], 0, -2, "num_axes"),
    ],
)
def test_reshape_bad_parameters(dims, axis, num_axes, message):
    body = (
        'type: "Reshape" reshape_param { shape { '
        + " ".join(f"dim: {d}" for d in dims)
        + f" }} axis: {axis} num_axes: {num_axes} }}"
    )
    with pytest.raises(NetBuildError, match=message):
        shape_of(body, {"x": (2, 3, 4)})


def test_reshape_and_flatten_refuse_in_place():
    for body in ('type: "Reshape" reshape_param { shape { dim: -1 } }', 'type: "Flatten"'):
        text = (
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
            f'layer {{ name: "l" bottom: "x" top: "x" {body} }}'
        )
        with pytest.raises(NetBuildError, match="in-place"):
            Net(net_from_string(text))


# ----- Flatten ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis,end_axis", list(itertools.product([0, 1, 2, -1], [-1, 1, 2, 3])))
def test_flatten_shapes_values_and_gradients(axis, end_axis):
    bottom = (2, 3, 4, 5)
    start, end = axis % 4, end_axis % 4
    body = f'type: "Flatten" flatten_param {{ axis: {axis} end_axis: {end_axis} }}'
    if end < start - 1:
        with pytest.raises(NetBuildError, match="end_axis"):
            shape_of(body, {"x": bottom})
        return
    expected = bottom[:start] + (int(np.prod(bottom[start : end + 1])),) + bottom[end + 1 :]
    assert shape_of(body, {"x": bottom})["top0"] == expected
    x = rand(*bottom)
    _, (top,) = run(body, {"x": x})
    np.testing.assert_array_equal(top.numpy(), x.numpy().reshape(expected))
    check_layer_gradients(body, {"x": bottom})


def test_flatten_default_is_axis_1_to_end():
    assert shape_of('type: "Flatten"', {"x": (2, 3, 4, 5)})["top0"] == (2, 60)


def test_flatten_after_reshape_passes_the_gradient():
    # Documented choice: Caffe loses this gradient (a diff-sharing bug); we keep the true one.
    text = (
        'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 6 } '
        "shape { dim: 2 dim: 6 } } }\n"
        'layer { name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param { shape { dim: 0 dim: 2 dim: 3 } } }\n'
        'layer { name: "f" type: "Flatten" bottom: "r" top: "f" }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "f" bottom: "t" top: "loss" }\n'
        "force_backward: true"
    )
    net = Net(net_from_string(text))
    net.retain_diffs = True
    x, t = torch.randn(2, 6), torch.randn(2, 6)
    net(x=x, t=t)
    net.backward()
    torch.testing.assert_close(net.blobs["x"].diff, (x - t) / 2)


# ----- Crop ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "axis,offsets",
    [
        (2, [1, 2]),
        (1, [1]),
        (2, []),
        (0, [0, 1, 1, 2]),
        (-1, [3]),
        (3, [0]),
        (1, [1, 0, 2]),
    ],
)
def test_crop_values_and_gradients(axis, offsets):
    data, ref = (2, 3, 4, 6), (2, 2, 2, 3)
    fields = " ".join(f"offset: {o}" for o in offsets)
    body = f'type: "Crop" crop_param {{ axis: {axis} {fields} }}'
    start = axis % 4
    offs = [0] * start + (offsets * (4 - start) if len(offsets) == 1 else offsets or [0] * (4 - start))
    index = tuple(slice(o, o + ref[i]) if i >= start else slice(None) for i, o in enumerate(offs))
    x = rand(*data)
    _, (top,) = run(body, {"x": x, "ref": rand(*ref)})
    np.testing.assert_array_equal(top.numpy(), x.numpy()[index])
    check_layer_gradients(body, {"x": data, "ref": ref}, wrt=["x"])


def test_crop_reference_gets_no_gradient():
    x = rand(2, 3, 4, 4).requires_grad_(True)
    ref = rand(2, 3, 2, 2).requires_grad_(True)
    layer, _ = run('type: "Crop"', {"x": x.detach(), "ref": ref.detach()})
    layer(x, ref).sum().backward()
    assert ref.grad is None
    assert x.grad.sum() == 2 * 3 * 2 * 2


@pytest.mark.parametrize(
    "axis,offsets,ref,message",
    [
        (2, [1, 2, 3], (2, 3, 2, 3), "offsets"),
        (2, [3, 0], (2, 3, 2, 3), "exceeds"),
        (2, [0], (2, 3, 5, 3), "exceeds"),
        (2, [0], (2, 4, 2, 3), "exceeds"),
        (2, [0], (2, 3, 2), "number of axes"),
    ],
)
def test_crop_bad_parameters(axis, offsets, ref, message):
    fields = " ".join(f"offset: {o}" for o in offsets)
    with pytest.raises(NetBuildError, match=message):
        shape_of(f'type: "Crop" crop_param {{ axis: {axis} {fields} }}', {"x": (2, 3, 4, 6), "ref": ref})


# ----- Tile ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis,tiles", list(itertools.product([0, 1, -1], [1, 2, 3])))
def test_tile_values_and_gradients(axis, tiles):
    body = f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}'
    x = rand(2, 3, 4)
    _, (top,) = run(body, {"x": x})
    reps = [1, 1, 1]
    reps[axis] = tiles
    np.testing.assert_array_equal(top.numpy(), np.tile(x.numpy(), reps))
    check_layer_gradients(body, {"x": (2, 3, 4)})


@pytest.mark.parametrize(
    "body", ['type: "Tile"', 'type: "Tile" tile_param { tiles: 0 }', 'type: "Tile" tile_param { tiles: 2 axis: 3 }']
)
def test_tile_bad_parameters(body):
    with pytest.raises(NetBuildError):
        shape_of(body, {"x": (2, 3, 4)})
