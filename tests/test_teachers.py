"""Teachers in prototxt: composition with prefixes, frozen teacher branches, ensembles, hints."""

import pytest
import torch

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string, read_net
from pipeline.weights.io import copy_layer_blobs

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


def test_embedded_copies_share_weights_by_param_name_and_read_given_inputs():
    from pipeline.text.compose import embed_layers

    net = net_from_string(
        'layer { name: "d" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }'
    )
    (layer,) = embed_layers(net, "a_", inputs={"data": "crop"}, share_params="teacher_")
    assert list(layer.bottom) == ["crop"] and list(layer.top) == ["a_fc"] and layer.name == "a_fc"
    assert [(s.name, s.lr_mult) for s in layer.param] == [("teacher_fc_0", 0), ("teacher_fc_1", 0)]


@pytest.fixture
def padded_digits(tmp_path):
    """Ten random 30 x 30 'digits' (28 x 28 padded by one pixel) in train and test LMDBs."""
    import numpy as np

    from pipeline.data.convert import write_images

    rng = np.random.default_rng(3)
    images = np.zeros((10, 30, 30), np.uint8)
    images[:, 1:29, 1:29] = rng.integers(0, 256, (10, 28, 28))
    for split in ("train", "test"):
        write_images(tmp_path / f"mnist_pad1_{split}_lmdb", images, np.arange(10) % 10, "%08d")
    return tmp_path, torch.from_numpy(images).float()[:, None] * 0.00390625


def test_shift_averaged_teacher_is_the_mean_logit_of_the_shared_teacher_on_every_crop(padded_digits):
    folder, digits = padded_digits
    variables = {
        "shift": 1,
        "batch": 5,
        "test_batch": 5,
        "student_hidden": [16],
        "teacher_hidden": [24],
        "train_source": str(folder / "mnist_pad1_train_lmdb"),
        "test_source": str(folder / "mnist_pad1_test_lmdb"),
    }
    net = Net(read_net("prototxt/hinton_distill.prototxt", variables), "TRAIN", seed=1)
    copies = [layer.name for layer in net.layers if layer.name.endswith("_fc1") and layer.name.startswith("t_")]
    assert len(copies) == 9
    teacher = Net(read_net("prototxt/mlp.prototxt", {"deploy": True, "batch": 5, "hidden": [24]}), "TEST", seed=5)
    source = {name: [b.detach().numpy() for b in blobs] for name, blobs in teacher.params.items()}
    report = copy_layer_blobs(net, source, "teacher", rename={n: "t_" + n for n in source})
    assert set(report.copied) == {"t_fc1", "t_logits"}
    for name in copies:  # every copy holds the loaded weights: one shared set
        assert torch.equal(net.params[name][0], teacher.params["fc1"][0])
    assert {p.layer for p in net.learnable_params if p.tensor.requires_grad} == {"fc1", "logits"}
    net()
    batch = digits[:5]
    assert torch.equal(net.blobs["data"].data, batch[:, :, 1:29, 1:29])  # the student: the digit, unshifted
    shifted = []
    with torch.no_grad():
        for dy in range(3):
            for dx in range(3):
                teacher(data=batch[:, :, dy : dy + 28, dx : dx + 28])
                shifted.append(teacher.blobs["logits"].data.clone())
    expected = torch.stack(shifted).mean(0)
    torch.testing.assert_close(net.blobs["t_mean_logits"].data, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(net.blobs["t_logits"].data, net.blobs["t_mean_logits"].data)
    # The teacher copies read fixed crops of the data: their soft target is cached like any frozen teacher's.
    (cache,) = net.soft_target_caches
    cached = {net.layers[i].name for i in cache.layers}
    assert cached >= set(copies) and "fc1" not in cached
