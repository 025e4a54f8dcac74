"""The fused distillation op against a plain PyTorch reference: values, gradients, registrations, compile."""

import itertools

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
    from pipeline.prototxt import net_from_string

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
