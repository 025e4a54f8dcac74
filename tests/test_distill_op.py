"""The fused distillation op against a plain PyTorch reference: values, gradients, registrations, compile."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import NetBuildError, PipelineError
from pipeline.ops.distill import distill_loss, load_library


def reference(
    s,
    t,
    label=None,
    temperature=1.0,
    alpha=1.0,
    mode="KL",
    teacher_is_prob=False,
    ignore_label=None,
    normalization="VALID",
):
    """The same loss written with log_softmax/softmax/kl_div/cross_entropy, rows = (N, C)."""
    rows = s.shape[0]
    valid = torch.ones(rows, dtype=s.dtype)
    if label is not None and ignore_label is not None:
        valid = (label != ignore_label).to(s.dtype)
    if mode == "LOGIT_MATCHING":
        per_row = 0.5 * ((s - t) ** 2).sum(1)
    else:
        zt = torch.log(t.clamp_min(torch.finfo(torch.float32).tiny)) if teacher_is_prob else t
        log_ps, log_pt = F.log_softmax(s / temperature, 1), F.log_softmax(zt / temperature, 1)
        per_row = alpha * temperature**2 * F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(1)
        if alpha < 1:
            safe = torch.where(valid > 0, label, torch.zeros_like(label))
            per_row = per_row + (1 - alpha) * F.cross_entropy(s, safe, reduction="none")
    norm = {"FULL": rows, "VALID": valid.sum(), "BATCH_SIZE": rows, "NONE": 1}[normalization]
    norm = torch.as_tensor(norm, dtype=s.dtype).clamp_min(1)
    return (per_row * valid).sum() / norm


@pytest.fixture(scope="module", autouse=True)
def built():
    load_library()


def _inputs(n, c, dtype, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, c, generator=g, dtype=dtype) * scale).requires_grad_(True)
    t = torch.randn(n, c, generator=g, dtype=dtype) * scale
    label = torch.randint(0, c, (n,), generator=g)
    return s, t, label


GRID = list(
    itertools.product(
        [torch.float32, torch.float64],
        ["KL", "LOGIT_MATCHING"],
        [1.0, 2.0, 4.0, 20.0],
        [1.0, 0.5, 0.0],
        ["VALID", "FULL", "BATCH_SIZE", "NONE"],
    )
)


@pytest.mark.parametrize("dtype, mode, temperature, alpha, normalization", GRID)
def test_matches_reference(dtype, mode, temperature, alpha, normalization):
    s, t, label = _inputs(13, 7, dtype)
    label[3] = label[8] = -1
    kwargs = dict(temperature=temperature, alpha=alpha, mode=mode, ignore_label=-1, normalization=normalization)
    ours = distill_loss(s, t, label, **kwargs)
    (grad_ours,) = torch.autograd.grad(ours, s)
    s_ref = s.detach().clone().requires_grad_(True)
    ref = reference(s_ref, t, label, **kwargs)
    (grad_ref,) = torch.autograd.grad(ref, s_ref)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(grad_ours, grad_ref, **tol)
    assert torch.all(grad_ours[3] == 0) and torch.all(grad_ours[8] == 0)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 20.0])
def test_teacher_probabilities_equal_teacher_logits(temperature):
    s, t, _ = _inputs(6, 9, torch.float64, seed=1)
    from_logits = distill_loss(s, t, temperature=temperature)
    from_probs = distill_loss(s, torch.softmax(t, 1), temperature=temperature, teacher_is_prob=True)
    torch.testing.assert_close(from_logits, from_probs)


def test_extreme_logits_stay_finite():
    s, t, label = _inputs(4, 10, torch.float32, scale=1e4, seed=2)
    loss = distill_loss(s, t, label, temperature=2.0, alpha=0.5)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ref = reference(s.detach().double(), t.double(), label, temperature=2.0, alpha=0.5)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-3)


def test_spatial_axis_rows():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    ours = distill_loss(s, t, temperature=2.0, normalization="FULL")
    flat = lambda x: x.movedim(1, -1).reshape(-1, 5)  # noqa: E731
    torch.testing.assert_close(ours, reference(flat(s), flat(t), temperature=2.0, normalization="FULL"))


@pytest.mark.parametrize("mode, alpha", [("KL", 1.0), ("KL", 0.3), ("LOGIT_MATCHING", 1.0)])
def test_gradcheck(mode, alpha):
    s, t, label = _inputs(5, 4, torch.float64, scale=1.0, seed=4)
    fn = lambda x: distill_loss(x, t, label, temperature=3.0, alpha=alpha, mode=mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s,))


def test_opcheck_registrations():
    s, t, label = _inputs(5, 4, torch.float32, seed=5)
    args = (s, t, label, 2.0, 0.5, 0, False, 0, False, 1, 5)
    torch.library.opcheck(torch.ops.caffe_pipeline.distill_loss.default, args)


def test_torch_compile_of_a_model_using_the_op():
    model = torch.nn.Linear(6, 4)
    x, teacher = torch.randn(8, 6), torch.randn(8, 4)

    def step(inputs):
        return distill_loss(model(inputs), teacher, temperature=4.0)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), step(x))
    compiled(x).backward()
    assert model.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=-0.1), "alpha"),
    ],
)
def test_bad_options(kwargs, message):
    s, t, _ = _inputs(3, 4, torch.float32)
    with pytest.raises(PipelineError, match=message):
        distill_loss(s, t, **kwargs)


def test_class_count_mismatch():
    with pytest.raises(PipelineError, match=r"\[3, 4\].*\[3, 5\]"):
        distill_loss(torch.randn(3, 4), torch.randn(3, 5))


def test_layer_checks_blobs_and_parameters():
    from pipeline.net import Net
    from pipeline.text.prototxt import net_from_string

    def net(kd, shapes=("dim: 2 dim: 10", "dim: 2 dim: 10")):
        return Net(
            net_from_string(
                f'layer {{ name: "in" type: "Input" top: "s" top: "t" top: "label" input_param {{ '
                f"shape {{ {shapes[0]} }} shape {{ {shapes[1]} }} shape {{ dim: 2 }} }} }}\n"
                f'layer {{ name: "kd" type: "KnowledgeDistillation" bottom: "s" bottom: "t" bottom: "label" '
                f'top: "loss" '
                f"knowledge_distillation_param {{ {kd} }} }}"
            )
        )

    assert net("temperature: 4").loss_weights[-1] == [1.0]
    with pytest.raises(NetBuildError, match=r"kd.*same shape"):
        net("temperature: 4", ("dim: 2 dim: 10", "dim: 2 dim: 12"))
    with pytest.raises(NetBuildError, match="temperature must be > 0"):
        net("temperature: 0")
    with pytest.raises(NetBuildError, match="alpha"):
        net("alpha: 2")


# ----- the public KD fork's syntax and reporting (wentianli/knowledge_distillation_caffe) --------------------
FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def _fork_rows(x, axis):
    """Caffe's outer x inner rows of a blob along the softmax axis, as (rows, channels)."""
    return np.moveaxis(np.asarray(x, dtype=np.float32), axis, -1).reshape(-1, x.shape[axis])


def _caffe_softmax(z):
    """Caffe's SoftmaxLayer::Forward_cpu in float32: subtract the channel max, exp, divide by the sum."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True, dtype=np.float32)


def _fork_probs(s, t, temperature, axis):
    inv_t = np.float32(1) / np.float32(temperature)  # caffe_scal by 1/T
    return _caffe_softmax(_fork_rows(s, axis) * inv_t), _caffe_softmax(_fork_rows(t, axis) * inv_t)


def _fork_valid(label, ignore_label, rows):
    if label is None or ignore_label is None:
        return np.ones(rows, dtype=bool)
    return np.asarray(label).reshape(-1) != ignore_label


def fork_forward(s, t, label=None, temperature=1.0, ignore_label=None, normalization="VALID", axis=1):
    """KnowledgeDistillationLayer::Forward_cpu (wentianli/knowledge_distillation_caffe,
    knowledge_distillation_layer.cpp) in numpy float32: loss -= p_t (log max(p_s, FLT_MIN) - log max(p_t, FLT_MIN))
    over valid rows, no T^2, divided by get_normalizer (VALID counts valid rows; BATCH_SIZE is outer_num_)."""
    ps, pt = _fork_probs(s, t, temperature, axis)
    valid = _fork_valid(label, ignore_label, ps.shape[0])
    terms = pt * (np.log(np.maximum(ps, FLT_MIN)) - np.log(np.maximum(pt, FLT_MIN)))
    loss = -terms[valid].sum(dtype=np.float32)
    outer = int(np.prod(s.shape[:axis]))
    norm = {"FULL": ps.shape[0], "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[normalization]
    return np.float32(loss / max(np.float32(norm), np.float32(1)))


def fork_backward(s, t, label=None, temperature=1.0, ignore_label=None, normalization="VALID", axis=1):
    """KnowledgeDistillationLayer::Backward_cpu (same file): diff = T p_s - T p_t (caffe_cpu_axpby), zero on
    ignored rows, scaled by top diff (1) / get_normalizer; returned in the student's shape."""
    ps, pt = _fork_probs(s, t, temperature, axis)
    T = np.float32(temperature)
    diff = T * ps - T * pt
    valid = _fork_valid(label, ignore_label, ps.shape[0])
    diff[~valid] = 0
    outer = int(np.prod(s.shape[:axis]))
    norm = {"FULL": ps.shape[0], "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[normalization]
    diff *= np.float32(1) / max(np.float32(norm), np.float32(1))
    moved = list(s.shape[:axis]) + list(s.shape[axis + 1 :]) + [s.shape[axis]]
    return np.moveaxis(diff.reshape(moved), -1, axis)


def kd_layer(kd, shape=(6, 10), label=True, extra=""):
    """A KnowledgeDistillation layer built from prototxt (Input s, t[, label]), for its module."""
    from pipeline.net import Net
    from pipeline.text.prototxt import net_from_string

    dims = " ".join(f"dim: {d}" for d in shape)
    label_shape = " ".join(f"dim: {d}" for d in (shape[0],) + tuple(shape[2:]))
    tops = 'top: "s" top: "t"' + (' top: "label"' if label else "")
    shapes = f"shape {{ {dims} }} shape {{ {dims} }}" + (f" shape {{ {label_shape} }}" if label else "")
    net = Net(
        net_from_string(
            f'layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes} }} }}\n'
            f'layer {{ name: "kd" type: "KnowledgeDistillation" bottom: "s" bottom: "t" '
            + ('bottom: "label" ' if label else "")
            + f'top: "loss" knowledge_distillation_param {{ {kd} }} {extra} }}'
        )
    )
    return net.layer("kd")


def _fork_case(scale, seed, shape=(6, 10)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g) * scale
    t = torch.randn(*shape, generator=g) * scale
    label = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g)
    label.view(-1)[1] = -1
    return s, t, label


@pytest.mark.parametrize("scale", [3.0, 1e3], ids=["normal", "extreme"])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_fork_syntax_reports_the_forks_loss(scale, temperature):
    """wentianli/knowledge_distillation_caffe, knowledge_distillation_layer.cpp, Forward_cpu: the fork's syntax
    (only `temperature`) reports KL without T^2, with p_s and p_t clamped at FLT_MIN, on normal and extreme logits."""
    s, t, label = _fork_case(scale, seed=11)
    layer = kd_layer(f"temperature: {temperature}", extra="loss_param { ignore_label: -1 }")
    assert layer.fork_syntax and layer.options["fork_report"]
    ours = layer(s, t, label)
    expected = fork_forward(s.numpy(), t.numpy(), label.numpy(), temperature, ignore_label=-1)
    np.testing.assert_allclose(float(ours), float(expected), rtol=2e-5, atol=1e-6)
    if scale > 100:  # the clamp matters here: the exact KL (our extended report) is far larger
        exact = distill_loss(s, t, label, temperature=temperature, ignore_label=-1) / temperature**2
        assert float(exact) > 1.2 * float(expected)


def test_fork_clamp_on_a_hand_case():
    """wentianli/knowledge_distillation_caffe, knowledge_distillation_layer.cpp, Forward_cpu: p_s = exp(-1000)
    underflows to 0 and log(max(0, FLT_MIN)) = log(FLT_MIN), so the row's KL is 0.5 (log 0.5 - log FLT_MIN) +
    0.5 log 0.5 rather than the exact ~499.3."""
    s = torch.tensor([[0.0, -1000.0]])
    t = torch.zeros(1, 2)
    ours = distill_loss(s, t, fork_report=True)
    expected = 0.5 * (np.log(0.5) - np.log(FLT_MIN)) + 0.5 * np.log(0.5)
    np.testing.assert_allclose(float(ours), expected, rtol=1e-6)
    np.testing.assert_allclose(float(ours), float(fork_forward(s.numpy(), t.numpy())), rtol=1e-6)
    np.testing.assert_allclose(float(distill_loss(s, t)), 0.5 * 1000 + np.log(0.5), rtol=1e-5)


@pytest.mark.parametrize("normalization", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("scale", [3.0, 1e3], ids=["normal", "extreme"])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_fork_syntax_gradient_is_the_forks(scale, temperature, normalization):
    """wentianli/knowledge_distillation_caffe, knowledge_distillation_layer.cpp, Backward_cpu: the student's diff
    is T (p_s - p_t) / normaliser (T^2 from the paper times 1/T), zero on ignored rows, in both syntaxes."""
    s, t, label = _fork_case(scale, seed=12)
    loss_param = f"loss_param {{ ignore_label: -1 normalization: {normalization} }}"
    expected = fork_backward(s.numpy(), t.numpy(), label.numpy(), temperature, -1, normalization)
    for kd in (f"temperature: {temperature}", f"temperature: {temperature} alpha: 1"):
        x = s.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(kd_layer(kd, extra=loss_param)(x, t, label), x)
        # 5e-7, or a few float32 ulps of T / normaliser where that is larger (T p_s - T p_t cancels: at T = 20
        # with NONE the terms are ~2 and their rounding alone ~2.4e-7 each).
        norm = {"VALID": 5, "FULL": 6, "BATCH_SIZE": 6, "NONE": 1}[normalization]
        atol = max(5e-7, 1e-7 * temperature / norm)
        np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=atol)


def test_fork_softmax_param_axis_on_4d_input():
    """wentianli/knowledge_distillation_caffe, knowledge_distillation_layer.cpp, LayerSetUp/Reshape: the softmaxes
    and outer_num_/inner_num_ come from softmax_param { axis }; here axis 2 of an (N, C, H, W) blob."""
    shape = (2, 3, 4, 5)
    g = torch.Generator().manual_seed(13)
    s, t = torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3
    layer = kd_layer("temperature: 2", shape=shape, label=False, extra="softmax_param { axis: 2 }")
    assert layer.axis == 2
    x = s.clone().requires_grad_(True)
    ours = layer(x, t)
    (grad,) = torch.autograd.grad(ours, x)
    ours = ours.detach()
    np.testing.assert_allclose(float(ours), float(fork_forward(s.numpy(), t.numpy(), temperature=2.0, axis=2)), 2e-5)
    np.testing.assert_allclose(grad.numpy(), fork_backward(s.numpy(), t.numpy(), temperature=2.0, axis=2), atol=5e-7)
    on_axis_1 = kd_layer("temperature: 2", shape=shape, label=False)(s, t)
    assert abs(float(on_axis_1) - float(ours)) > 1e-3
    # Our own `axis` field agrees with softmax_param, or the layer refuses the pair.
    assert kd_layer("temperature: 2 axis: 2", shape=shape, label=False, extra="softmax_param { axis: 2 }").axis == 2
    with pytest.raises(NetBuildError, match="softmax_param axis 2 differ"):
        kd_layer("temperature: 2 axis: 1", shape=shape, label=False, extra="softmax_param { axis: 2 }")


@pytest.mark.parametrize(
    "kd",
    [
        "temperature: 4 alpha: 1",
        "temperature: 4 axis: 1",
        "temperature: 4 cache_teacher: false",
        "temperature: 4 mode: KL",
    ],
)
def test_extended_syntax_keeps_t2_kl(kd):
    """Any of our fields (numbers >= 1000) selects the extended syntax: T^2 KL from the exact log-softmax, unlike
    the fork's Forward_cpu (wentianli/knowledge_distillation_caffe, knowledge_distillation_layer.cpp)."""
    s, t, label = _fork_case(3.0, seed=14)
    layer = kd_layer(kd)
    assert not layer.fork_syntax and not layer.options["fork_report"]
    torch.testing.assert_close(layer(s, t, label), reference(s, t, temperature=4.0))
    fork = kd_layer("temperature: 4")(s, t, label)
    torch.testing.assert_close(fork, reference(s, t, temperature=4.0) / 16, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the composite kernel is registered for CUDA")
def test_fork_report_composite_kernel_matches():
    """The composite (CUDA) kernel reports the fork's loss as the fused CPU one does (Forward_cpu of
    wentianli/knowledge_distillation_caffe, knowledge_distillation_layer.cpp), and the same gradient."""
    s, t, label = _fork_case(1e3, seed=15)
    for fork_report in (True, False):
        x = s.clone().requires_grad_(True)
        fused = distill_loss(x, t, label, temperature=4.0, ignore_label=-1, fork_report=fork_report)
        (grad,) = torch.autograd.grad(fused, x)
        y = s.cuda().requires_grad_(True)
        on_gpu = distill_loss(y, t.cuda(), label.cuda(), temperature=4.0, ignore_label=-1, fork_report=fork_report)
        (grad_gpu,) = torch.autograd.grad(on_gpu, y)
        np.testing.assert_allclose(float(on_gpu), float(fused), rtol=2e-5)
        np.testing.assert_allclose(grad_gpu.cpu().numpy(), grad.numpy(), atol=5e-7)
