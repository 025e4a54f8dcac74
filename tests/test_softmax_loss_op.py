"""The fused C++ SoftmaxWithLoss op against Caffe's loop in numpy, the ATen formulation it replaces, and the
layer's fallback where the op cannot be built."""

import numpy as np
import pytest
import torch
from gradcheck_util import single_layer_net

from pipeline.errors import NetBuildError, PipelineError
from pipeline.net.layers import softmax_loss as layer_module
from pipeline.net.layers.softmax_loss import SoftmaxLabelLoss
from pipeline.ops import build
from pipeline.ops import fast_ops as op_module

if not op_module.available():
    pytest.skip("the softmax loss op could not be built here (no C++ compiler)", allow_module_level=True)

FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def caffe_loop(x: np.ndarray, labels: np.ndarray, normalizer: float):
    """Caffe's CPU SoftmaxWithLoss, statement by statement in the scores' dtype: loss and bottom diff."""
    dtype = x.dtype.type
    prob = np.empty_like(x)
    for r, row in enumerate(x):
        e = np.exp(row - row.max())
        total = dtype(0)
        for value in e:
            total = dtype(total + value)
        prob[r] = e / total
    loss = dtype(0)
    for r, label in enumerate(labels.astype(np.int64)):
        loss = dtype(loss - np.log(max(prob[r, label], dtype(FLT_MIN))))
    diff = prob.copy()
    diff[np.arange(len(labels)), labels.astype(np.int64)] -= 1
    return dtype(loss / dtype(normalizer)), diff * dtype(1 / dtype(normalizer))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows, classes, normalizer", [(64, 10, 64.0), (7, 1000, 7.0), (3, 2, 1.0), (100, 10, 5.0)])
def test_op_equals_caffes_loop(dtype, rows, classes, normalizer):
    rng = np.random.default_rng(rows * classes)
    x = rng.normal(0, 4, (rows, classes)).astype(np.float64 if dtype == torch.float64 else np.float32)
    labels = rng.integers(0, classes, rows).astype(np.float32)
    scores = torch.tensor(x, requires_grad=True)
    loss = op_module.softmax_label_loss(scores, torch.tensor(labels), normalizer)
    loss.backward()
    want_loss, want_diff = caffe_loop(x, labels, normalizer)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert loss.dtype == dtype and loss.shape == ()
    np.testing.assert_allclose(loss.item(), want_loss, rtol=tol)
    np.testing.assert_allclose(scores.grad.numpy(), want_diff, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_equals_the_aten_formulation(dtype):
    torch.manual_seed(0)
    x = (torch.randn(32, 10, dtype=dtype) * 3).requires_grad_()
    labels = torch.randint(0, 10, (32,))
    fused = op_module.softmax_label_loss(x, labels.float(), 32.0)
    (g_fused,) = torch.autograd.grad(fused * 2.5, x)
    aten = SoftmaxLabelLoss.apply(x, labels, 32.0)
    (g_aten,) = torch.autograd.grad(aten * 2.5, x)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(fused, aten, rtol=8 * eps, atol=0)
    torch.testing.assert_close(g_fused, g_aten, rtol=0, atol=8 * eps)


def test_gradcheck_and_extreme_logits():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 6, 3, 3, 1], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: op_module.softmax_label_loss(s, labels, 3.0), (x,))
    huge = torch.tensor([[1e4, -1e4, 0.0], [0.0, 1e4, -1e4]], requires_grad=True)
    loss = op_module.softmax_label_loss(huge, torch.tensor([1.0, 1.0]), 2.0)
    loss.backward()
    # Row 0's label has probability 0: Caffe clips it at FLT_MIN, -log(FLT_MIN) = 87.3365; row 1's is 1.
    assert loss.item() == pytest.approx(-np.log(FLT_MIN) / 2, rel=1e-6)
    assert torch.isfinite(huge.grad).all()
    assert huge.grad.tolist() == [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]


def test_labels_truncate_like_caffes_int_cast_and_bad_ones_raise():
    x = torch.randn(3, 4)
    as_ints = op_module.softmax_label_loss(x, torch.tensor([0, 2, 3]), 3.0)
    assert op_module.softmax_label_loss(x, torch.tensor([0.9, 2.5, 3.999]), 3.0) == as_ints
    assert op_module.softmax_label_loss(x, torch.tensor([-0.5, 2.0, 3.0]), 3.0) == as_ints  # -0.5 -> 0, as in C
    assert op_module.softmax_label_loss(x, torch.tensor([1.0, 2.0, 3.0]), 3.0) != as_ints
    for bad in ([0.0, 4.0, 1.0], [0.0, -1.0, 1.0], [0.0, float("nan"), 1.0]):
        with pytest.raises(RuntimeError, match="out of range"):
            op_module.softmax_label_loss(x, torch.tensor(bad), 3.0)


def loss_net(n=6, classes=5):
    return single_layer_net('type: "SoftmaxWithLoss"', {"x": (n, classes), "label": (n,)}, 1)


def test_layer_takes_the_fused_op_and_the_fallback_agrees(monkeypatch):
    calls = []
    fused = layer_module.softmax_label_loss
    monkeypatch.setattr(layer_module, "softmax_label_loss", lambda *a: calls.append(1) or fused(*a))
    net = loss_net()
    x = torch.randn(6, 5, requires_grad=True)
    label = torch.tensor([0.0, 1, 2, 3, 4, 0])
    layer = net.layer("under_test")
    loss = layer(x, label)
    (grad,) = torch.autograd.grad(loss, x)
    assert calls == [1]
    monkeypatch.setitem(op_module._state, "ready", False)
    fallback = layer(x, label)
    (fallback_grad,) = torch.autograd.grad(fallback, x)
    assert calls == [1]
    torch.testing.assert_close(fallback, loss)
    torch.testing.assert_close(fallback_grad, grad)


def test_bad_label_through_the_fused_path_names_the_layer_and_bottom():
    net = loss_net()
    with pytest.raises(NetBuildError, match=r"label 7 in bottom 'label' is out of range \[0, 5\)") as info:
        net.layer("under_test")(torch.randn(6, 5), torch.tensor([0.0, 1, 7, 3, 4, 0]))
    assert "under_test" in str(info.value)


def test_unbuildable_op_warns_once_and_reports_unavailable(monkeypatch):
    monkeypatch.setattr(op_module, "_state", {})

    def no_compiler(*args):
        raise PipelineError("the softmax loss op is C++ and needs a compiler: 'c++' was not found")

    monkeypatch.setattr(build, "build_op_library", no_compiler)
    with pytest.warns(UserWarning, match="needs a compiler.*ATen ops instead"):
        assert op_module.available() is False
    assert op_module.available() is False  # remembered: no second build attempt, no second warning


def test_opcheck_registrations():
    scores = torch.randn(6, 5, requires_grad=True)
    torch.library.opcheck(
        torch.ops.caffe_pipeline.softmax_label_loss.default, (scores, torch.tensor([0.0, 1, 2, 3, 4, 0]), 6.0)
    )


def test_torch_compile_of_a_model_using_the_op():
    model = torch.nn.Linear(6, 4)
    x, labels = torch.randn(8, 6), torch.tensor([0.0, 1, 2, 3, 3, 2, 1, 0])

    def step(inputs):
        return op_module.softmax_label_loss(model(inputs), labels, 8.0)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), step(x))
    compiled(x).backward()
    assert model.weight.grad is not None


def test_fast_op_builds_and_runs_when_the_exact_build_fails(monkeypatch):
    """The fused op is a library of its own: a failed bit-exact build (pipeline/ops/caffe_cpu.py) leaves it built
    and used by the default path."""
    from pipeline.ops import build, caffe_cpu

    real_build = build.build_op_library

    def exact_fails(library):
        if library is build.CAFFE_CPU:
            raise PipelineError("the Caffe CPU arithmetic ops failed to build (test)")
        return real_build(library)

    monkeypatch.setattr(caffe_cpu, "_state", {})
    monkeypatch.setattr(op_module, "_state", {})
    monkeypatch.setattr(build, "build_op_library", exact_fails)
    with pytest.warns(UserWarning, match="failed to build"):
        assert caffe_cpu.available() is False
    assert op_module.available() is True
    calls = []
    fused = layer_module.softmax_label_loss
    monkeypatch.setattr(layer_module, "softmax_label_loss", lambda *a: calls.append(1) or fused(*a))
    loss = loss_net().layer("under_test")(torch.randn(6, 5), torch.tensor([0.0, 1, 2, 3, 4, 0]))
    assert calls == [1] and torch.isfinite(loss)
