"""Softmax, SoftmaxWithLoss and InfogainLoss against loop-by-loop numpy re-computations of Caffe's code."""

import itertools

import numpy as np
import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.net.layers.registry import layer_class
from pipeline.text.prototxt import net_from_string
from pipeline.weights.blobs import array_to_blob

FLT_MIN = float(np.finfo(np.float32).tiny)
# loss_param text -> normalisation Caffe applies ("unset" = SoftmaxWithLoss's default, VALID)
MODES = {
    "normalization: FULL": "FULL",
    "normalization: VALID": "VALID",
    "normalization: BATCH_SIZE": "BATCH_SIZE",
    "normalization: NONE": "NONE",
    "normalize: true": "VALID",
    "normalize: false": "BATCH_SIZE",
    "": "VALID",
}


def run_layer(body, feeds, n_tops=1, grad=("x",)):
    """Forward one layer in float64 on `feeds`; returns its outputs and the (leaf) input tensors."""
    net = single_layer_net(body, {k: tuple(v.shape) for k, v in feeds.items()}, n_tops)
    inputs = {k: torch.as_tensor(v, dtype=torch.float64).clone().requires_grad_(k in grad) for k, v in feeds.items()}
    return net.layer("under_test")(*inputs.values()), inputs


def labels_for(shape, classes, rng, ignore=None):
    lab = rng.integers(0, classes, size=shape).astype(np.float64)
    if ignore is not None:
        lab.flat[::3] = ignore
    return lab


def caffe_normalizer(mode, outer, inner, valid):
    return max(1.0, {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode])


def ref_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_weighted_loss(x, lab, axis, ignore, mode, weights_of, threshold):
    """Caffe's loop: loss = -sum_l W[label, l] log(max(p_l, thr)) / norm; diff = (p sum(W[label]) - W[label]) / norm."""
    outer, classes = int(np.prod(x.shape[:axis])), x.shape[axis]
    x3 = x.reshape(outer, classes, -1)
    p = ref_softmax(x3, 1)
    lab = lab.reshape(outer, -1)
    loss, valid, diff = 0.0, 0, np.zeros_like(x3)
    for i, j in itertools.product(range(outer), range(x3.shape[2])):
        label = int(lab[i, j])
        if ignore is not None and label == ignore:
            continue
        w = weights_of(label)
        loss -= (w * np.log(np.maximum(p[i, :, j], threshold))).sum()
        diff[i, :, j] = p[i, :, j] * w.sum() - w
        valid += 1
    norm = caffe_normalizer(mode, outer, x3.shape[2], valid)
    return loss / norm, (diff / norm).reshape(x.shape), p.reshape(x.shape)


# ----- Softmax ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_matches_numpy_and_gradchecks(axis):
    x = np.random.default_rng(0).normal(size=(2, 3, 4)) * 3
    out, _ = run_layer(f"type: 'Softmax' softmax_param {{ axis: {axis} }}", {"x": x})
    np.testing.assert_allclose(out.detach().numpy(), ref_softmax(x, axis), rtol=1e-12)
    check_layer_gradients(f"type: 'Softmax' softmax_param {{ axis: {axis} }}", {"x": (2, 3, 2)})


def test_softmax_float32_stays_float32_and_bad_axis_is_our_error():
    net = Net(
        net_from_string(
            "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }\n"
            "layer { name: 'sm' type: 'Softmax' bottom: 'x' top: 'y' }"
        )
    )
    assert net(x=torch.randn(2, 3))["y"].dtype == torch.float32
    with pytest.raises(NetBuildError, match="axis 3 out of range"):
        single_layer_net("type: 'Softmax' softmax_param { axis: 3 }", {"x": (2, 3)})


# ----- SoftmaxWithLoss --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, ignore, axis", list(itertools.product(MODES, [None, -1, 2], [1, 2])))
def test_softmax_with_loss_grid(mode, ignore, axis):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 4, 3, 2)) * 2
    lab_shape = tuple(np.delete(x.shape, axis))
    lab = labels_for(lab_shape, x.shape[axis], rng, ignore)
    loss_param = f"loss_param {{ {mode} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    body = f"type: 'SoftmaxWithLoss' softmax_param {{ axis: {axis} }} {loss_param}"
    loss, inputs = run_layer(body, {"x": x, "lab": lab})
    loss.backward()
    want, want_diff, _ = ref_weighted_loss(
        x, lab, axis, ignore, MODES[mode], lambda k: np.eye(x.shape[axis])[k], FLT_MIN
    )
    assert loss.item() == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(inputs["x"].grad.numpy(), want_diff, rtol=1e-10, atol=1e-14)
    assert inputs["lab"].grad is None


@pytest.mark.parametrize(
    "mode, ignore", list(itertools.product(["normalization: FULL", "normalization: VALID", ""], [None, 1]))
)
def test_softmax_with_loss_gradcheck(mode, ignore):
    lab = torch.tensor([[0.0, 1, 2], [1, 1, 0]])
    loss_param = f"loss_param {{ {mode} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    check_layer_gradients(
        f"type: 'SoftmaxWithLoss' {loss_param}", {"x": (2, 3, 3), "lab": (2, 3)}, inputs={"lab": lab}, wrt=["x"]
    )


def test_softmax_with_loss_every_label_ignored_gives_zero_not_nan():
    x = np.random.default_rng(1).normal(size=(3, 4))
    loss, inputs = run_layer("type: 'SoftmaxWithLoss' loss_param { ignore_label: 5 }", {"x": x, "lab": np.full(3, 5.0)})
    loss.backward()
    assert loss.item() == 0.0 and not inputs["x"].grad.any()


def test_softmax_with_loss_clips_at_flt_min_and_keeps_caffes_gradient():
    x = np.array([[0.0, -200.0], [3.0, 1.0]])
    loss, inputs = run_layer("type: 'SoftmaxWithLoss'", {"x": x, "lab": np.array([1.0, 0.0])})
    loss.backward()
    p = ref_softmax(x, 1)
    assert loss.item() == pytest.approx((-np.log(FLT_MIN) - np.log(p[1, 0])) / 2, rel=1e-12)
    np.testing.assert_allclose(inputs["x"].grad.numpy(), (p - np.eye(2)[[1, 0]]) / 2, rtol=1e-12)


def test_softmax_with_loss_second_top_is_the_probability_and_sends_no_gradient():
    rng = np.random.default_rng(3)
    x, lab = rng.normal(size=(4, 5)), np.array([0.0, 4, 2, 2])
    (loss, prob), inputs = run_layer("type: 'SoftmaxWithLoss'", {"x": x, "lab": lab}, n_tops=2)
    np.testing.assert_allclose(prob.detach().numpy(), ref_softmax(x, 1), rtol=1e-12)
    assert not prob.requires_grad
    net = single_layer_net("type: 'SoftmaxWithLoss'", {"x": (4, 5), "lab": (4,)}, n_tops=2)
    assert net.loss_weights[-1] == [1.0, 0.0]


def test_softmax_with_loss_weight_scales_the_gradient():
    text = (
        "force_backward: true\n"
        "layer { name: 'in' type: 'Input' top: 'x' top: 'lab' input_param { shape { dim: 3 dim: 4 } "
        "shape { dim: 3 } } }\n"
        "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'x' bottom: 'lab' top: 'loss' loss_weight: 0.5 }"
    )
    net = Net(net_from_string(text)).double()
    net.retain_diffs = True
    x, lab = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0.0, 3, 1], dtype=torch.float64)
    net(x=x, lab=lab)
    net.backward()
    p = torch.softmax(x, 1)
    torch.testing.assert_close(net.blobs["x"].diff, 0.5 * (p - torch.eye(4, dtype=torch.float64)[[0, 3, 1]]) / 3)
    assert not net.blobs["lab"].diff.any()


# ----- InfogainLoss -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, ignore, axis",
    list(
        itertools.product(
            ["normalization: FULL", "normalization: VALID", "normalization: BATCH_SIZE", "normalization: NONE", ""],
            [None, 0],
            [1, -1],
        )
    ),
)
def test_infogain_grid_with_h_bottom(mode, ignore, axis):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 2, 4)) if axis == -1 else rng.normal(size=(3, 4, 2))
    classes = 4
    h = rng.uniform(0, 2, size=(classes, classes))
    lab = labels_for((3, 2), classes, rng, ignore)
    loss_param = f"loss_param {{ {mode} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    body = f"type: 'InfogainLoss' infogain_loss_param {{ axis: {axis} }} {loss_param}"
    loss, inputs = run_layer(body, {"x": x, "lab": lab, "H": h}, grad=("x", "H"))
    loss.backward()
    want, want_diff, _ = ref_weighted_loss(x, lab, axis % x.ndim, ignore, MODES[mode], lambda k: h[k], 1e-20)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(inputs["x"].grad.numpy(), want_diff, rtol=1e-10, atol=1e-14)
    assert inputs["H"].grad is None and inputs["lab"].grad is None


def test_infogain_gradcheck():
    rng = np.random.default_rng(2)
    h = torch.from_numpy(rng.uniform(0, 1, size=(5, 5)))
    check_layer_gradients(
        "type: 'InfogainLoss'",
        {"x": (4, 5), "lab": (4,), "H": (5, 5)},
        inputs={"lab": torch.tensor([0.0, 4, 2, 2]), "H": h},
        wrt=["x"],
    )


def test_infogain_reads_h_from_binaryproto(tmp_path):
    rng = np.random.default_rng(5)
    h = rng.uniform(0, 1, size=(1, 1, 3, 3)).astype(np.float32)
    path = tmp_path / "H.binaryproto"
    path.write_bytes(array_to_blob(h).SerializeToString())
    x, lab = rng.normal(size=(4, 3)), np.array([0.0, 2, 1, 1])
    body = f"type: 'InfogainLoss' infogain_loss_param {{ source: '{path}' }}"
    loss, _ = run_layer(body, {"x": x, "lab": lab})
    with_bottom, _ = run_layer("type: 'InfogainLoss'", {"x": x, "lab": lab, "H": h.reshape(3, 3)})
    assert loss.item() == pytest.approx(with_bottom.item(), rel=1e-12)
    check_layer_gradients(body, {"x": (4, 3), "lab": (4,)}, inputs={"lab": torch.from_numpy(lab)}, wrt=["x"])


@pytest.mark.parametrize(
    "body, bottoms, message",
    [
        ("type: 'InfogainLoss'", {"x": (4, 3), "lab": (4,)}, "source must name the H matrix"),
        (
            "type: 'InfogainLoss' infogain_loss_param { source: '/nonexistent/H.binaryproto' }",
            {"x": (4, 3), "lab": (4,)},
            "cannot read infogain matrix '/nonexistent/H.binaryproto'",
        ),
        (
            "type: 'InfogainLoss'",
            {"x": (4, 3), "lab": (4,), "H": (4, 4)},
            r"infogain bottom 'H' \[4, 4\] must hold 3x3",
        ),
        (
            "type: 'InfogainLoss' loss_param { normalize: true }",
            {"x": (4, 3), "lab": (4,), "H": (3, 3)},
            "normalize is deprecated",
        ),
        (
            "type: 'InfogainLoss'",
            {"x": (4, 3), "lab": (4, 2), "H": (3, 3)},
            r"bottom 'lab' \[4, 2\] holds 8 labels but bottom 'x' \[4, 3\]",
        ),
    ],
)
def test_infogain_errors(body, bottoms, message):
    with pytest.raises(NetBuildError, match=message):
        single_layer_net(body, bottoms)


def test_infogain_bad_binaryproto_is_our_error(tmp_path):
    path = tmp_path / "H.binaryproto"
    path.write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(NetBuildError, match="not a valid BlobProto"):
        single_layer_net(f"type: 'InfogainLoss' infogain_loss_param {{ source: '{path}' }}", {"x": (2, 3), "lab": (2,)})


# ----- shared checks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_type", ["SoftmaxWithLoss", "InfogainLoss"])
def test_label_count_mismatch_names_blobs_and_shapes(layer_type):
    extra = {"H": (5, 5)} if layer_type == "InfogainLoss" else {}
    with pytest.raises(
        NetBuildError,
        match=r"under_test.*bottom 'lab' \[2, 4\] holds 8 labels but bottom 'x' "
        r"\[2, 5, 3\] with classes on axis 1 needs 6",
    ):
        single_layer_net(f"type: '{layer_type}'", {"x": (2, 5, 3), "lab": (2, 4), **extra})
    with pytest.raises(NetBuildError, match=r"'x' \[2, 5\] and 'lab' \[3\] must have the same first dimension"):
        single_layer_net(f"type: '{layer_type}'", {"x": (2, 5), "lab": (3,), **extra})


def test_out_of_range_label_is_our_error():
    net = single_layer_net("type: 'SoftmaxWithLoss' loss_param { ignore_label: -1 }", {"x": (3, 4), "lab": (3,)})
    with pytest.raises(NetBuildError, match=r"label 4 in bottom 'lab' is out of range \[0, 4\)"):
        net.layer("under_test")(torch.zeros(3, 4, dtype=torch.float64), torch.tensor([0.0, -1, 4]))


def test_loss_types_are_losses():
    for name in [
        "SoftmaxWithLoss",
        "InfogainLoss",
        "SigmoidCrossEntropyLoss",
        "HingeLoss",
        "ContrastiveLoss",
        "MultinomialLogisticLoss",
    ]:
        assert layer_class(name).is_loss
    assert not layer_class("Softmax").is_loss
