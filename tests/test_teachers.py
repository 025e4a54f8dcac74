"""Teachers in prototxt: composition with prefixes, frozen teacher branches, ensembles, hints."""

import pytest
import torch

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.prototxt import net_from_string, read_net
from pipeline.weights import copy_layer_blobs

pytest.importorskip("pipeline.ops.distill")


def teacher_student(phase="TRAIN", **variables):
    return Net(read_net("prototxt/teacher_student.prototxt", {"data": "dummy", **variables}), phase, seed=1)


def test_template_prefixes_teacher_and_freezes_it():
    net = teacher_student()
    names = [layer.name for layer in net.layers]
    assert "t_conv1" in names and "conv1" not in names and "fc1" in names
    assert all(spec.lr_mult == 0 for spec in net.layer("t_conv1").param.param)
    trainable = {p.layer for p in net.learnable_params if p.tensor.requires_grad}
    assert trainable == {"fc1", "fc2", "logits"}
    net()
    assert net.blobs["t_ip2"].data.grad_fn is None and net.blobs["logits"].data.grad_fn is not None
    net.backward()
    assert net.layer("t_conv1").weight.grad is None and net.layer("fc1").weight.grad is not None


def test_teacher_weights_load_by_prefix_rename():
    teacher = Net(read_net("prototxt/lenet.prototxt", {"data": "dummy"}), "TEST", seed=7)
    net = teacher_student()
    source = {name: [b.detach().numpy() for b in blobs] for name, blobs in teacher.params.items()}
    report = copy_layer_blobs(net, source, "lenet", rename={n: "t_" + n for n in source})
    assert set(report.copied) == {"t_conv1", "t_conv2", "t_ip1", "t_ip2"}
    assert torch.equal(net.params["t_conv1"][0], teacher.params["conv1"][0])


def test_test_phase_scores_student_and_teacher():
    out = teacher_student("TEST")()
    assert {"accuracy", "teacher_accuracy", "loss"} <= set(out)


def test_teacher_given_as_probabilities():
    net = teacher_student(
        teacher="lenet.prototxt",
        teacher_logits="prob",
        teacher_is_prob=True,
        teacher_vars={"deploy": True, "deploy_batch": 100},
    )
    assert "t_prob" in net.blobs
    assert net.layer("distill").options["teacher_is_prob"]


ENSEMBLE = """
layer {{ name: "in" type: "Input" top: "a" top: "b" input_param {{ shape {{ dim: 3 dim: 5 }} }} }}
layer {{ name: "ens" type: "TeacherEnsemble" bottom: "a" bottom: "b" top: "t"
  teacher_ensemble_param {{ combine: {combine} temperature: {T} {weights} }} }}
"""


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_ensemble_arithmetic_mean_of_tempered_probabilities(T):
    net = Net(net_from_string(ENSEMBLE.format(combine="ARITHMETIC", T=T, weights="")), "TRAIN")
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    t = net(a=a, b=b)["t"]
    expected = (torch.softmax(a / T, 1) + torch.softmax(b / T, 1)) / 2
    torch.testing.assert_close(torch.softmax(t / T, 1), expected)


def test_ensemble_geometric_and_weights():
    net = Net(net_from_string(ENSEMBLE.format(combine="GEOMETRIC", T=1, weights="weight: 3 weight: 1")), "TRAIN")
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(net(a=a, b=b)["t"], 0.75 * a + 0.25 * b)
    with pytest.raises(NetBuildError, match="weights"):
        Net(net_from_string(ENSEMBLE.format(combine="GEOMETRIC", T=1, weights="weight: 1")), "TRAIN")


HINT = """
layer { name: "in" type: "Input" top: "s" top: "t" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 }
  shape { dim: 2 dim: 5 dim: 4 dim: 4 } } }
layer { name: "hint" type: "HintLoss" bottom: "s" bottom: "t" top: "hint" }
"""


def test_hint_loss_regresses_student_onto_teacher():
    net = Net(net_from_string(HINT), "TRAIN", seed=2)
    weight = net.params["hint"][0]
    assert weight.shape == (5, 3, 1, 1)
    s, t = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4)
    loss = net(s=s, t=t)["hint"]
    mapped = torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], s)
    torch.testing.assert_close(loss, ((mapped - t) ** 2).sum() / 4)
    loss.backward()
    assert weight.grad is not None and s.grad is not None
    with pytest.raises(NetBuildError, match="every axis but channels"):
        Net(net_from_string(HINT.replace("dim: 5 dim: 4 dim: 4", "dim: 5 dim: 3 dim: 3")), "TRAIN")


def test_hint_gradients():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from gradcheck_util import check_layer_gradients

    check_layer_gradients(
        'type: "HintLoss" hint_param { bias_term: true }', {"s": (2, 3, 2, 2), "t": (2, 4, 2, 2)}, wrt=["s"]
    )


def test_soft_target_cache_skips_the_teacher_on_known_samples():
    net = teacher_student(cache_teacher=True)
    cache = net.soft_target_caches[0]
    calls = []
    net.layer("t_conv1").register_forward_hook(lambda *args: calls.append(1))
    x, y = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,)).float()
    first = net(data=x, label=y)["loss"]
    again = net(data=x, label=y)["loss"]
    assert len(calls) == 1 and cache.hits == 1 and len(cache.rows) == 100
    torch.testing.assert_close(again, first, rtol=1e-3, atol=1e-4)
    again.backward()
    assert net.layer("fc1").weight.grad is not None
    shuffled = torch.randperm(100)
    torch.testing.assert_close(net(data=x[shuffled], label=y[shuffled])["loss"], first, rtol=1e-3, atol=1e-4)
    net(data=torch.randn(100, 1, 28, 28), label=y)
    assert len(calls) == 2 and cache.misses == 2


def test_soft_target_cache_refuses_a_random_teacher():
    with pytest.raises(NetBuildError, match=r"cache_teacher.*Dropout"):
        teacher_student(
            cache_teacher=True, teacher="mlp.prototxt", teacher_logits="logits", teacher_vars={"dropout": 0.5}
        )
