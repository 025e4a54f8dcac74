"""Accuracy and ArgMax (no backward) against loop-by-loop numpy re-computations of Caffe's code."""

import itertools

import numpy as np
import pytest
import torch
from gradcheck_util import single_layer_net

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.net.layers.registry import layer_class
from pipeline.text.prototxt import net_from_string


def forward(body, feeds, n_tops=1):
    net = single_layer_net(body, {k: tuple(np.shape(v)) for k, v in feeds.items()}, n_tops)
    return net.layer("under_test")(*[torch.as_tensor(v, dtype=torch.float64) for v in feeds.values()])


# ----- Accuracy ---------------------------------------------------------------------------------------------------
def ref_accuracy(x, lab, axis, top_k, ignore):
    """Caffe master: correct if fewer than top_k other classes score >= the label's score."""
    outer, classes = int(np.prod(x.shape[:axis])), x.shape[axis]
    x3, lab = x.reshape(outer, classes, -1), lab.reshape(outer, -1).astype(int)
    hits, seen = np.zeros(classes), np.zeros(classes)
    for i, j in itertools.product(range(outer), range(x3.shape[2])):
        label = lab[i, j]
        if ignore is not None and label == ignore:
            continue
        seen[label] += 1
        hits[label] += (x3[i, :, j] >= x3[i, label, j]).sum() - 1 < top_k
    total = seen.sum()
    return (hits.sum() / total if total else 0.0), np.where(seen > 0, hits / np.maximum(seen, 1), 0)


@pytest.mark.parametrize("top_k, ignore, spatial", list(itertools.product([1, 2, 4], [None, 0, 3], [False, True])))
def test_accuracy_grid(top_k, ignore, spatial):
    rng = np.random.default_rng(21)
    x = rng.normal(size=(3, 5, 2, 2) if spatial else (12, 5))
    lab = rng.integers(0, 5, size=(3, 2, 2) if spatial else (12,)).astype(float)
    param = f"accuracy_param {{ top_k: {top_k} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    acc, per_class = forward(f"type: 'Accuracy' {param}", {"x": x, "lab": lab}, n_tops=2)
    want, want_per_class = ref_accuracy(x, lab, 1, top_k, ignore)
    assert acc.item() == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(per_class.numpy(), want_per_class, rtol=1e-12)
    assert acc.shape == () and per_class.shape == (5,)


def test_accuracy_axis_and_ties():
    x = np.random.default_rng(2).normal(size=(2, 3, 4))
    lab = np.array([[0.0, 1, 2], [3, 3, 1]])
    acc = forward("type: 'Accuracy' accuracy_param { axis: 2 top_k: 2 }", {"x": x, "lab": lab})
    assert acc.item() == pytest.approx(ref_accuracy(x, lab, 2, 2, None)[0])
    # A tie with the label's score counts against it (master's >= comparison).
    tie = forward("type: 'Accuracy'", {"x": [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], "lab": [0.0, 1.0]})
    assert tie.item() == 0.5


def test_accuracy_every_label_ignored_is_zero_and_no_grad_in_a_net():
    acc = forward("type: 'Accuracy' accuracy_param { ignore_label: 1 }", {"x": np.ones((2, 3)), "lab": [1.0, 1.0]})
    assert acc.item() == 0.0
    assert not layer_class("Accuracy").has_backward and not layer_class("Accuracy").is_loss
    text = (
        "force_backward: true\n"
        "layer { name: 'in' type: 'Input' top: 'x' top: 'lab' input_param { shape { dim: 3 dim: 4 } "
        "shape { dim: 3 } } }\n"
        "layer { name: 'acc' type: 'Accuracy' bottom: 'x' bottom: 'lab' top: 'acc' }"
    )
    out = Net(net_from_string(text))(x=torch.randn(3, 4), lab=torch.tensor([0.0, 1, 2]))
    assert out["acc"].dtype == torch.float32 and not out["acc"].requires_grad


@pytest.mark.parametrize(
    "bottoms, message",
    [
        ({"x": (4, 5), "lab": (4,)}, r"top_k 6 must not exceed the number of classes: bottom 'x' \[4, 5\] holds 5"),
        (
            {"x": (2, 5, 3), "lab": (2, 6)},
            r"top_k 6 must not exceed the number of classes: bottom 'x' \[2, 5, 3\] holds 2",
        ),
    ],
)
def test_accuracy_top_k_larger_than_classes(bottoms, message):
    with pytest.raises(NetBuildError, match=message):
        single_layer_net("type: 'Accuracy' accuracy_param { top_k: 6 }", bottoms)


def test_accuracy_label_count_mismatch_names_blobs_and_shapes():
    with pytest.raises(NetBuildError, match=r"bottom 'lab' \[2, 2\] holds 4 labels but bottom 'x' \[2, 4, 3\]"):
        single_layer_net("type: 'Accuracy'", {"x": (2, 4, 3), "lab": (2, 2)})


# ----- ArgMax -----------------------------------------------------------------------------------------------------
def ref_top_k(v, k):
    """Indices of the k largest, ties to the larger index (std::greater on (value, index) pairs)."""
    order = sorted(range(len(v)), key=lambda i: (v[i], i), reverse=True)[:k]
    return np.array(order, dtype=float), np.array([v[i] for i in order])


def ref_argmax(x, top_k, out_max_val, axis):
    if axis is None:
        rows = [ref_top_k(item.ravel(), top_k) for item in x]
        out = np.stack([np.stack(r) if out_max_val else r[0][None] for r in rows])
        return out.reshape(out.shape + (1,) * (x.ndim - 3))
    moved = np.moveaxis(x, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    picked = np.stack([ref_top_k(v, top_k)[1 if out_max_val else 0] for v in flat])
    return np.moveaxis(picked.reshape(moved.shape[:-1] + (top_k,)), -1, axis)


ARGMAX_GRID = [
    (shape, k, val, axis)
    for shape, k, val, axis in itertools.product([(3, 6), (2, 3, 2, 2)], [1, 3], [False, True], [None, 1, -1])
    if axis is None or k <= shape[axis]
]


@pytest.mark.parametrize("shape, top_k, out_max_val, axis", ARGMAX_GRID)
def test_argmax_grid(shape, top_k, out_max_val, axis):
    # Rounded values make ties, which must go to the larger index.
    x = np.round(np.random.default_rng(5).normal(size=shape), 0)
    param = f"argmax_param {{ top_k: {top_k} out_max_val: {str(out_max_val).lower()} "
    param += "}" if axis is None else f"axis: {axis} }}"
    out = forward(f"type: 'ArgMax' {param}", {"x": x})
    want = ref_argmax(x, top_k, out_max_val, axis)
    assert out.shape == want.shape
    np.testing.assert_array_equal(out.numpy(), want)


def test_argmax_top_shapes_and_no_backward():
    net = single_layer_net("type: 'ArgMax' argmax_param { out_max_val: true top_k: 2 }", {"x": (6, 5)})
    assert net.blob_shapes["top0"] == (6, 2, 2)
    net = single_layer_net("type: 'ArgMax'", {"x": (2, 4, 3, 5)})
    assert net.blob_shapes["top0"] == (2, 1, 1, 1)
    net = single_layer_net("type: 'ArgMax' argmax_param { axis: 1 top_k: 2 }", {"x": (2, 4, 3, 5)})
    assert net.blob_shapes["top0"] == (2, 2, 3, 5)
    assert not layer_class("ArgMax").has_backward


@pytest.mark.parametrize(
    "param, message",
    [
        ("top_k: 6", r"top_k 6 must not exceed the 5 values per item of bottom 'x' \[4, 5\]"),
        ("top_k: 6 axis: 1", r"top_k 6 must not exceed the size 5 of axis 1 of bottom 'x' \[4, 5\]"),
        ("top_k: 0", "top_k must be at least 1"),
        ("axis: 2", "axis 2 out of range"),
    ],
)
def test_argmax_errors(param, message):
    with pytest.raises(NetBuildError, match=message):
        single_layer_net(f"type: 'ArgMax' argmax_param {{ {param} }}", {"x": (4, 5)})
