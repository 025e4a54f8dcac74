"""The 2017 study's mnist/ts_lenet.prototxt (../shared/seedrepo) trains here: LeNet student and frozen LeNet teacher
in one net, joined at the data layer and at a SigmoidCrossEntropyLoss over the two softmax outputs, once its data
sources point at our LMDBs; and again with that loss swapped for KnowledgeDistillation at T = 4 on the logits.
The teacher gets (random, LeNet-shaped) weights through a --weights-map rename, as the study's
load_model_weights.py did."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SHARED

from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.solvers import build_solver
from pipeline.text.prototxt import read_net, read_solver
from pipeline.weights.io import save_caffemodel
from pipeline.weights.name_map import load_weights, parse_weights_map

SEED = SHARED / "seedrepo" / "mnist"
pytestmark = pytest.mark.skipif(not (SEED / "ts_lenet.prototxt").exists(), reason="../shared/seedrepo absent")

TEACHER = ("conv_t1", "conv_t2", "ip_t1", "ip_t2")
STUDENT = ("conv_s1", "conv_s2", "ip_s1", "ip_s2")
RENAME = "conv1=conv_t1,conv2=conv_t2,ip1=ip_t1,ip2=ip_t2"
ITERS = 12


@pytest.fixture(scope="module")
def lmdbs(tmp_path_factory):
    from pipeline.data.prepare import prepare_mnist

    out = tmp_path_factory.mktemp("mnist")
    prepare_mnist(out, None, download=False)
    return {phase: str(out / "mnist" / f"mnist_{split}_lmdb") for phase, split in ((0, "train"), (1, "test"))}


@pytest.fixture(scope="module")
def teacher_model(tmp_path_factory):
    """A LeNet caffemodel with the study teacher's 100 outputs and BVLC layer names (conv1 ... ip2)."""
    net = Net(read_net("prototxt/lenet.prototxt", {"data": "dummy", "num_classes": 100}), "TEST", seed=5)
    path = tmp_path_factory.mktemp("teacher") / "lenet100.caffemodel"
    save_caffemodel(net, path)
    return path


def seed_net(lmdbs, kd: bool) -> caffe_pb2.NetParameter:
    net = read_net(SEED / "ts_lenet.prototxt")
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = lmdbs[layer.include[0].phase]
            layer.data_param.batch_size = 32
    if kd:
        # The study's softmax + SigmoidCrossEntropyLoss pair becomes one KD loss on the logits.
        keep = [layer for layer in net.layer if layer.name not in ("sf_s1", "sf_t1")]
        del net.layer[:]
        net.layer.extend(keep)
        loss = next(layer for layer in net.layer if layer.name == "ts_loss")
        loss.type = "KnowledgeDistillation"
        loss.bottom[:] = ["ip_s2", "ip_t2"]
        loss.knowledge_distillation_param.temperature = 4
    return net


def train(lmdbs, teacher_model, kd: bool):
    param = read_solver(SEED / "ts_lenet_solver.prototxt")
    param.ClearField("net")
    param.net_param.CopyFrom(seed_net(lmdbs, kd))
    param.max_iter, param.test_iter[:], param.test_interval = ITERS, [2], 1000
    param.display, param.snapshot, param.snapshot_after_train = 0, 0, False
    param.solver_mode, param.random_seed = caffe_pb2.SolverParameter.CPU, 3
    solver = build_solver(param, progress=False)
    load_weights(solver, str(teacher_model), parse_weights_map(RENAME))
    before = {name: [p.detach().clone() for p in solver.net.params[name]] for name in TEACHER + STUDENT}
    losses = []
    solver.on_iteration.append(lambda s: losses.append(float(s.last_loss)))
    solver.solve()
    return solver, before, losses


@pytest.mark.parametrize("kd", [False, True], ids=["sigmoid_ce_on_softmaxes", "kd_T4_on_logits"])
def test_ts_lenet_trains_with_a_frozen_teacher(lmdbs, teacher_model, kd):
    solver, before, losses = train(lmdbs, teacher_model, kd)
    net = solver.net
    assert [layer.type_name for layer in net.layers if layer.is_loss] == (
        ["KnowledgeDistillation"] if kd else ["SigmoidCrossEntropyLoss"]
    )
    assert len(losses) == ITERS and all(math.isfinite(v) for v in losses)
    assert len(set(losses)) > 1, f"the loss never changed: {losses}"
    if kd:
        # Same batches come back only after 4,000 images; a falling trend over 12 steps of SGD on the KD loss.
        assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    for name in TEACHER:
        for old, new in zip(before[name], net.params[name]):
            assert torch.equal(old, new), f"teacher layer {name} changed (lr_mult 0)"
        assert all(p.grad is None for p in net.params[name]), f"teacher layer {name} got a gradient"
    assert any(not torch.equal(old, new) for name in STUDENT for old, new in zip(before[name], net.params[name]))
    # The teacher really is the loaded LeNet (not the prototxt's zero fill), in the test net too.
    assert net.params["conv_t1"][0].abs().sum() > 0
    assert torch.equal(solver.test_nets[0].params["ip_t2"][0], net.params["ip_t2"][0])
    scores = solver.test()
    assert 0 <= scores["accuracy"] <= 1


def test_teacher_weights_that_fill_no_layer_are_an_error(lmdbs, teacher_model):
    from pipeline.errors import WeightsError

    param = read_solver(SEED / "ts_lenet_solver.prototxt")
    param.ClearField("net")
    param.net_param.CopyFrom(seed_net(lmdbs, kd=False))
    param.test_interval, param.snapshot, param.snapshot_after_train, param.solver_mode = 1000, 0, False, 0
    solver = build_solver(param, progress=False)
    with pytest.raises(WeightsError, match="fills no layer"):
        load_weights(solver, str(teacher_model))
