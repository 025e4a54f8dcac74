"""SigmoidCrossEntropyLoss, HingeLoss, ContrastiveLoss and MultinomialLogisticLoss against numpy re-computations."""

import itertools

import numpy as np
import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError


def run_layer(body, feeds, grad=("x",)):
    net = single_layer_net(body, {k: tuple(np.shape(v)) for k, v in feeds.items()})
    inputs = {k: torch.as_tensor(v, dtype=torch.float64).clone().requires_grad_(k in grad) for k, v in feeds.items()}
    loss = net.layer("under_test")(*inputs.values())
    loss.backward()
    return loss.item(), inputs


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ----- SigmoidCrossEntropyLoss ------------------------------------------------------------------------------------
SCE_MODES = {
    "normalization: FULL": "FULL",
    "normalization: VALID": "VALID",
    "normalization: BATCH_SIZE": "BATCH_SIZE",
    "normalization: NONE": "NONE",
    "normalize: true": "VALID",
    "normalize: false": "BATCH_SIZE",
    "": "BATCH_SIZE",  # this layer's own default, unlike SoftmaxWithLoss
}


@pytest.mark.parametrize("mode, ignore", list(itertools.product(SCE_MODES, [None, -1])))
def test_sigmoid_cross_entropy_grid(mode, ignore):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 2, 4)) * 4
    t = rng.uniform(0, 1, size=(3, 8))
    if ignore is not None:
        t.flat[::5] = ignore
    loss_param = f"loss_param {{ {mode} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    loss, inputs = run_layer(f"type: 'SigmoidCrossEntropyLoss' {loss_param}", {"x": x, "t": t})
    valid = np.ones(t.shape, bool) if ignore is None else t.astype(int) != ignore
    xs, ts = x.reshape(t.shape), t
    per = -(ts * np.log(sigmoid(xs)) + (1 - ts) * np.log(1 - sigmoid(xs)))
    norm = max(1.0, {"FULL": t.size, "VALID": valid.sum(), "BATCH_SIZE": 3, "NONE": 1}[SCE_MODES[mode]])
    assert loss == pytest.approx((per * valid).sum() / norm, rel=1e-10)
    want_diff = np.where(valid, sigmoid(xs) - ts, 0) / norm
    np.testing.assert_allclose(inputs["x"].grad.numpy().reshape(t.shape), want_diff, rtol=1e-10, atol=1e-15)
    assert inputs["t"].grad is None


def test_sigmoid_cross_entropy_is_stable_for_large_scores():
    loss, inputs = run_layer("type: 'SigmoidCrossEntropyLoss'", {"x": [[200.0, -200.0]], "t": [[0.0, 1.0]]})
    assert loss == pytest.approx(400.0)
    np.testing.assert_allclose(inputs["x"].grad.numpy(), [[1.0, -1.0]])


@pytest.mark.parametrize("loss_param", ["", "loss_param { ignore_label: -1 normalization: VALID }"])
def test_sigmoid_cross_entropy_gradcheck(loss_param):
    t = torch.tensor([[0.0, 1, 0.3], [-1, 0.5, 1]])
    check_layer_gradients(
        f"type: 'SigmoidCrossEntropyLoss' {loss_param}", {"x": (2, 3), "t": (2, 3)}, inputs={"t": t}, wrt=["x"]
    )


def test_sigmoid_cross_entropy_count_mismatch():
    with pytest.raises(NetBuildError, match=r"'x' \[2, 3\] and 't' \[2, 4\] must have the same count"):
        single_layer_net("type: 'SigmoidCrossEntropyLoss'", {"x": (2, 3), "t": (2, 4)})


# ----- HingeLoss --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm, shape", list(itertools.product(["L1", "L2"], [(4, 5), (3, 2, 2, 1)])))
def test_hinge_loss(norm, shape):
    rng = np.random.default_rng(9)
    x = rng.normal(size=shape) * 1.5
    n, dim = shape[0], int(np.prod(shape[1:]))
    lab = rng.integers(0, dim, size=n).astype(float)
    loss, inputs = run_layer(f"type: 'HingeLoss' hinge_loss_param {{ norm: {norm} }}", {"x": x, "lab": lab})
    sign = np.where(np.arange(dim)[None, :] == lab[:, None], -1.0, 1.0)  # -t: -1 at the label, +1 elsewhere
    margin = np.maximum(0, 1 + sign * x.reshape(n, dim))
    assert loss == pytest.approx((margin if norm == "L1" else margin**2).sum() / n, rel=1e-12)
    want = (np.sign(margin) if norm == "L1" else 2 * margin) * sign / n
    np.testing.assert_allclose(inputs["x"].grad.numpy().reshape(n, dim), want, rtol=1e-12)
    assert inputs["lab"].grad is None


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradcheck(norm):
    check_layer_gradients(
        f"type: 'HingeLoss' hinge_loss_param {{ norm: {norm} }}",
        {"x": (3, 4), "lab": (3,)},
        inputs={"lab": torch.tensor([0.0, 3, 1])},
        wrt=["x"],
    )


def test_hinge_label_errors():
    with pytest.raises(NetBuildError, match=r"bottom 'lab' \[3, 2\] must hold one label per item of bottom 'x'"):
        single_layer_net("type: 'HingeLoss'", {"x": (3, 4), "lab": (3, 2)})
    net = single_layer_net("type: 'HingeLoss'", {"x": (2, 4), "lab": (2,)})
    with pytest.raises(NetBuildError, match=r"label 4 in bottom 'lab' is out of range \[0, 4\)"):
        net.layer("under_test")(torch.zeros(2, 4, dtype=torch.float64), torch.tensor([0.0, 4.0]))


# ----- ContrastiveLoss --------------------------------------------------------------------------------------------
def caffe_contrastive(a, b, sim, margin, legacy):
    """Caffe's forward and its backward (with the 1e-4 in the non-legacy denominator)."""
    n = a.shape[0]
    diff = a - b
    d2 = (diff**2).sum(1)
    d = np.sqrt(d2)
    similar = sim.astype(int) != 0
    dissim = np.maximum(margin - d2, 0) if legacy else np.maximum(margin - d, 0) ** 2
    loss = np.where(similar, d2, dissim).sum() / n / 2
    slack = margin - d2 if legacy else margin - d
    push = -np.ones(n) / n if legacy else -(1 / n) * slack / (d + 1e-4)
    coef = np.where(similar, 1 / n, np.where(slack > 0, push, 0))
    return loss, coef[:, None] * diff


@pytest.mark.parametrize("margin, legacy", list(itertools.product([1.0, 3.0], [False, True])))
def test_contrastive_loss_matches_caffe(margin, legacy):
    rng = np.random.default_rng(13)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    sim = np.array([1.0, 0, 0, 1, 0, 0.7])  # 0.7 casts to int 0: dissimilar
    body = (
        f"type: 'ContrastiveLoss' contrastive_loss_param {{ margin: {margin} legacy_version: {str(legacy).lower()} }}"
    )
    loss, inputs = run_layer(body, {"a": a, "b": b, "sim": sim}, grad=("a", "b", "sim"))
    want_loss, want_grad = caffe_contrastive(a, b, sim, margin, legacy)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(inputs["a"].grad.numpy(), want_grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(inputs["b"].grad.numpy(), -want_grad, rtol=1e-12, atol=1e-15)
    assert inputs["sim"].grad is None


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_gradcheck(legacy):
    # The non-legacy backward's 1e-4 in the denominator is a relative error of about 1e-4 / ||a - b||, well inside
    # gradcheck's rtol for these distances (margin 3 keeps the dissimilar pairs' hinge active).
    body = f"type: 'ContrastiveLoss' contrastive_loss_param {{ margin: 3.0 legacy_version: {str(legacy).lower()} }}"
    check_layer_gradients(
        body, {"a": (4, 3), "b": (4, 3), "sim": (4,)}, inputs={"sim": torch.tensor([1.0, 0, 0, 1])}, wrt=["a", "b"]
    )


def test_contrastive_shape_errors():
    with pytest.raises(NetBuildError, match=r"'a' \[4, 3\] and 'b' \[4, 2\] must be feature pairs"):
        single_layer_net("type: 'ContrastiveLoss'", {"a": (4, 3), "b": (4, 2), "sim": (4,)})
    with pytest.raises(NetBuildError, match=r"bottom 'sim' \[4, 2\] must hold one similarity flag per pair"):
        single_layer_net("type: 'ContrastiveLoss'", {"a": (4, 3), "b": (4, 3), "sim": (4, 2)})


# ----- MultinomialLogisticLoss ------------------------------------------------------------------------------------
def test_multinomial_logistic_loss_and_clip():
    p = np.array([[0.2, 0.5, 0.3], [0.0, 0.9, 0.1], [0.6, 0.1, 0.3]])
    lab = np.array([1.0, 0, 2])
    loss, inputs = run_layer("type: 'MultinomialLogisticLoss'", {"x": p, "lab": lab})
    assert loss == pytest.approx(-(np.log(0.5) + np.log(1e-20) + np.log(0.3)) / 3, rel=1e-12)
    want = np.zeros_like(p)
    want[0, 1], want[1, 0], want[2, 2] = -1 / (3 * 0.5), -1 / (3 * 1e-20), -1 / (3 * 0.3)
    np.testing.assert_allclose(inputs["x"].grad.numpy(), want, rtol=1e-12)
    assert inputs["lab"].grad is None


def test_multinomial_logistic_gradcheck():
    p = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 1)
    check_layer_gradients(
        "type: 'MultinomialLogisticLoss'",
        {"x": (4, 5), "lab": (4,)},
        inputs={"x": p, "lab": torch.tensor([0.0, 4, 2, 2])},
        wrt=["x"],
    )


def test_multinomial_logistic_label_count_error():
    with pytest.raises(NetBuildError, match=r"bottom 'lab' \[4, 2\] must hold one label per item of bottom 'x'"):
        single_layer_net("type: 'MultinomialLogisticLoss'", {"x": (4, 5), "lab": (4, 2)})
