"""The model zoo's net templates (prototxt/*.prototxt).

Every net template renders in all its forms (train_val with lmdb / dummy / hdf5 / input data, and deploy), takes its
variables and names bad ones; it builds in TRAIN and TEST and as deploy with the right output blobs, shapes and
parameter counts; the small nets run forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np
import pytest
import torch
from conftest import shared_path
from model_zoo_util import FORMS, ZOO

import pipeline.net.layers.base as layer_base
from pipeline.data.convert import compute_image_mean, write_images
from pipeline.errors import PipelineError, TemplateError
from pipeline.net import Net
from pipeline.net.fillers import check_filler
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import net_from_string, read_net, read_text
from pipeline.weights.io import copy_layer_blobs

DATA_TYPES = {"lmdb": "Data", "dummy": "DummyData", "hdf5": "HDF5Data", "input": "Input"}


@dataclass
class Spec:
    """What a zoo net must build to. `params`: every blob Caffe would save (BatchNorm statistics included);
    `learned`: blobs with lr_mult != 0; `train_params`: where the train_val net has more (GoogLeNet's auxiliary heads).
    """

    template: str
    prob: tuple[int, ...]
    params: int
    learned: int | None = None
    train_params: int | None = None
    variables: dict = field(default_factory=dict)
    small: bool = False
    train_outputs: tuple[str, ...] = ("loss",)
    test_outputs: tuple[str, ...] = ("accuracy", "loss")

    @property
    def id(self) -> str:
        return self.template + "".join(f"-{k}={v}" for k, v in self.variables.items())


NUMBERED = {"train_outputs": ("SoftmaxWithLoss1",), "test_outputs": ("SoftmaxWithLoss1", "Accuracy1")}
SPECS = [
    Spec("lenet", (64, 10), 431_080, small=True),
    Spec("mlp", (100, 10), 1_276_810, small=True),
    Spec("cifar10_quick", (1, 10), 145_578, small=True),
    Spec("cifar10_full", (1, 10), 89_578, small=True),
    Spec("cifar10_mini", (1, 10), 48_554, small=True),
    Spec("nin", (1, 10, 1, 1), 966_986, small=True),
    Spec("resnet_cifar", (1, 10), 274_847, learned=273_258, small=True, **NUMBERED),
    Spec("resnet_cifar", (1, 10), 862_211, learned=857_898, variables={"depth": 56}, **NUMBERED),
    Spec("mobilenet", (1, 10), 733_461, learned=727_434, small=True, **NUMBERED),
    Spec("mobilenet", (10, 1000), 4_253_891, learned=4_231_976, variables={"variant": "imagenet"}, **NUMBERED),
    Spec("caffenet", (10, 1000), 60_965_224),
    Spec("caffenet", (10, 1000), 60_965_224, variables={"variant": "alexnet"}),
    Spec("vgg16", (10, 1000), 138_357_544, test_outputs=("accuracy", "accuracy_top5", "loss")),
    Spec("squeezenet", (10, 1000, 1, 1), 1_235_496, test_outputs=("accuracy", "accuracy_top5")),
    Spec(
        "googlenet",
        (10, 1000),
        6_998_552,
        train_params=13_378_280,
        train_outputs=("loss1/loss1", "loss2/loss1", "loss3/loss3"),
        test_outputs=tuple(f"loss{k}/{o}" for k in (1, 2, 3) for o in (f"loss{1 if k < 3 else 3}", "top-1", "top-5")),
    ),
]
SMALL = [s for s in SPECS if s.small]


def _ids(specs):
    return [s.id for s in specs]


def zoo_net(spec: Spec, **variables) -> caffe_pb2.NetParameter:
    return read_net(ZOO / f"{spec.template}.prototxt", {**spec.variables, **variables})


@pytest.fixture
def shapes_only(monkeypatch):
    """Build nets without drawing their weights: blobs live on torch's meta device (no memory, no time), so the big
    nets' shapes are checked in the fast suite. Filler parameters are still validated."""

    def fill(param, shape, generator=None):
        check_filler(param, tuple(shape))
        return torch.empty(tuple(int(d) for d in shape), device="meta")

    monkeypatch.setattr(layer_base, "fill", fill)


def _count(net: Net) -> int:
    return sum(b.numel() for layer in net.layers for b in layer.blobs)


def _learned(net: Net) -> int:
    return sum(p.tensor.numel() for p in net.learnable_params if p.lr_mult != 0)


# ----- templates -------------------------------------------------------------------------------------------------
def test_every_template_has_a_spec():
    # teacher_student.prototxt composes two zoo nets (tests/test_teachers.py covers it, and hinton_distill's
    # shift-averaged teacher); hinton_mnist.prototxt and hinton_distill.prototxt are bench/hinton_mnist.py's
    # experiment nets over LMDBs it writes itself.
    not_zoo = {"macros", "teacher_student", "hinton_mnist", "hinton_distill"}
    templates = {p.stem for p in ZOO.glob("*.prototxt")} - not_zoo
    assert templates == {s.template for s in SPECS}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("spec", SPECS, ids=_ids(SPECS))
def test_renders_and_parses(spec, form):
    net = zoo_net(spec, **FORMS[form])
    sources = [layer for layer in net.layer if not layer.bottom]
    if form == "deploy":
        assert [(s.type, list(s.top)) for s in sources] == [("Input", ["data"])]
        assert not any(layer.type in ("SoftmaxWithLoss", "Accuracy") for layer in net.layer)
        assert net.layer[-1].type == "Softmax" and list(net.layer[-1].top) == ["prob"]
    else:
        # One data layer per phase, each with the data and label tops.
        assert [(s.type, list(s.top), s.include[0].phase) for s in sources] == [
            (DATA_TYPES[form], ["data", "label"], caffe_pb2.TRAIN),
            (DATA_TYPES[form], ["data", "label"], caffe_pb2.TEST),
        ]
        assert any(layer.type == "SoftmaxWithLoss" for layer in net.layer)


def test_lmdb_form_is_bvlcs_data_layer():
    train, test = (layer for layer in zoo_net(SPECS[0]).layer if layer.type == "Data")
    assert (train.data_param.source, train.data_param.batch_size) == ("data/mnist/mnist_train_lmdb", 64)
    assert (test.data_param.source, test.data_param.batch_size) == ("data/mnist/mnist_test_lmdb", 100)
    assert train.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert train.transform_param.scale == pytest.approx(0.00390625)
    caffenet = read_net(ZOO / "caffenet.prototxt", {"data_root": "/d", "batch": 8})
    train, test = (layer for layer in caffenet.layer if layer.type == "Data")
    assert train.transform_param.mirror and not test.transform_param.mirror
    assert (train.transform_param.crop_size, train.transform_param.mean_file) == (
        227,
        "/d/ilsvrc12/imagenet_mean.binaryproto",
    )
    assert (train.data_param.batch_size, test.data_param.batch_size) == (8, 50)


@pytest.mark.parametrize("template", ["lenet", "cifar10_quick"])
def test_lmdb_form_reads_real_lmdbs(template, tmp_path):
    """The default form against the real Data layer: tiny LMDBs written like `make data` writes them (raw uint8
    Datum records), and for CIFAR the mean image; the first batch is the first records, transformed as Caffe does."""
    dims = (1, 28, 28) if template == "lenet" else (3, 32, 32)
    images = np.random.default_rng(0).integers(0, 256, (6, *dims), dtype=np.uint8)
    for split in ("train", "test"):
        write_images(tmp_path / f"{split}_lmdb", images, np.arange(6) % 10, "%08d")
    mean = compute_image_mean(tmp_path / "train_lmdb", tmp_path / "mean.binaryproto").reshape(dims)
    variables = {"train_source": str(tmp_path / "train_lmdb"), "test_source": str(tmp_path / "test_lmdb")}
    variables.update(batch=4, test_batch=3, mean_file=str(tmp_path / "mean.binaryproto"))
    net = Net(read_net(ZOO / f"{template}.prototxt", variables), phase="TRAIN", seed=1)
    with torch.no_grad():
        assert torch.isfinite(net()["loss"])
    expected = images[:4] * np.float32(0.00390625) if template == "lenet" else images[:4] - mean
    np.testing.assert_allclose(net.blobs["data"].data.numpy(), expected, rtol=1e-6)
    assert net.blobs["label"].data.tolist() == [0, 1, 2, 3]


def test_hdf5_form_reads_caffes_hdf5_files(tmp_path):
    """The hdf5 form on the HDF5 files the real Caffe trained LeNet from (../shared/caffe-reference/train/_data)."""
    h5 = shared_path("caffe-reference", "train", "_data", "mnist_test_1000.h5")
    (tmp_path / "list.txt").write_text(f"{h5}\n")
    variables = {"data": "hdf5", "train_source": str(tmp_path / "list.txt"), "test_source": str(tmp_path / "list.txt")}
    net = Net(read_net(ZOO / "lenet.prototxt", {**variables, "test_batch": 5}), phase="TEST", seed=1)
    with torch.no_grad():
        outputs = net()
    assert torch.isfinite(outputs["loss"]) and net.blobs["data"].shape == (5, 1, 28, 28)
    with h5py.File(h5) as f:
        np.testing.assert_array_equal(net.blobs["data"].data.numpy(), f["data"][:5])
        np.testing.assert_array_equal(net.blobs["label"].data.numpy(), f["label"][:5])


def test_variables_reach_the_net():
    net = read_net(ZOO / "lenet.prototxt", {"deploy": True, "deploy_batch": 3, "num_classes": 7})
    assert list(net.layer[0].input_param.shape[0].dim) == [3, 1, 28, 28]
    assert net.layer[-2].inner_product_param.num_output == 7
    vgg = read_net(ZOO / "vgg16.prototxt", {"data": "dummy", "batch": 2, "crop_size": 64})
    assert list(vgg.layer[0].dummy_data_param.shape[0].dim) == [2, 3, 64, 64]


def test_bad_choices_name_the_template_line():
    with pytest.raises(
        TemplateError, match=r"macros\.prototxt:\d+: data must be lmdb, dummy, hdf5 or input, got leveldb"
    ):
        read_net(ZOO / "lenet.prototxt", {"data": "leveldb"})
    with pytest.raises(TemplateError, match=r"resnet_cifar\.prototxt:\d+: depth must be 6n\+2"):
        read_net(ZOO / "resnet_cifar.prototxt", {"depth": 21})
    for template in ("caffenet", "mobilenet"):
        with pytest.raises(TemplateError, match=rf"{template}\.prototxt:\d+: variant must be .*got resnet"):
            read_net(ZOO / f"{template}.prototxt", {"variant": "resnet"})


def test_macros_compose_a_net_from_a_string():
    text = """{% import "macros.prototxt" as m %}
name: "tiny"
{{ m.data_layers("dummy", false, (3, 8, 8), 2, 2) }}
{{ m.vgg_stage(1, "data", 2, 4) }}
{{ m.fire("fire2", "pool1", 2, 4) }}
{{ m.inception("inception_3a", "fire2/concat", 2, 2, 2, 2, 2, 2) }}
{%- set ns = namespace(conv=0, relu=0, eltwise=0) %}
{{ m.resnet_block(ns, "inception_3a/output", 8) }}
{{ m.resnet_block(ns, "Eltwise1", 8, stride=2, project=true) }}
{{ m.dw_separable(ns, "Eltwise2", 8, 16, 2) }}
{{ m.mlpconv(1, "Convolution" ~ ns.conv, 6, 3, 1, 1, (6, 5)) }}
{{ m.pool("pool", "cccp2", "AVE", global_pooling=true) }}
{{ m.loss("loss", "pool") }}
"""
    net = Net(net_from_string(text), phase="TRAIN", seed=1)
    assert net.blob_shapes["conv1_2"] == (2, 4, 8, 8)
    assert net.blob_shapes["fire2/concat"] == (2, 8, 4, 4)
    assert net.blob_shapes["inception_3a/output"] == (2, 8, 4, 4)
    assert net.blob_shapes["Eltwise1"] == (2, 8, 4, 4)
    assert net.blob_shapes["Eltwise2"] == (2, 8, 2, 2)
    assert net.blob_shapes["Convolution7"] == (2, 16, 1, 1)
    assert net.blob_shapes["cccp2"] == (2, 5, 1, 1)
    net()
    assert torch.isfinite(net.loss)


def test_zoo_errors_are_ours():
    # Wrong variable values reach the user as our errors naming the template line, not Jinja tracebacks.
    for template, variables in (("mobilenet", {"data": 3}), ("resnet_cifar", {"depth": "deep"})):
        with pytest.raises(PipelineError, match=r"\.prototxt:\d+: "):
            read_text(ZOO / f"{template}.prototxt", variables)


# ----- building ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=_ids(SPECS))
def test_builds_with_caffe_shapes_and_parameter_counts(spec, shapes_only):
    deploy = Net(zoo_net(spec, deploy=True), phase="TEST")
    assert deploy.input_names == ["data"]
    assert deploy.output_names == ["prob"]
    assert deploy.blob_shapes["prob"] == spec.prob
    assert _count(deploy) == spec.params
    if spec.learned is not None:
        assert _learned(deploy) == spec.learned
    for phase, outputs in (("TRAIN", spec.train_outputs), ("TEST", spec.test_outputs)):
        net = Net(zoo_net(spec, data="dummy", batch=2, test_batch=3), phase=phase)
        assert sorted(net.output_names) == sorted(outputs), phase
        assert all(net.blob_shapes[o] == () for o in outputs)
        assert net.blob_shapes["label"] == ((2,) if phase == "TRAIN" else (3,))
        assert _count(net) == (spec.train_params or spec.params)


@pytest.mark.parametrize("spec", SMALL, ids=_ids(SMALL))
def test_small_nets_run_forward_and_backward(spec):
    torch.manual_seed(0)
    train = Net(zoo_net(spec, data="dummy", batch=2), phase="TRAIN", seed=1)
    outputs = train()
    (loss_name,) = spec.train_outputs
    assert outputs[loss_name].shape == () and torch.isfinite(outputs[loss_name])
    train.backward()
    for p in train.learnable_params:
        if p.lr_mult:
            assert p.tensor.grad is not None and torch.isfinite(p.tensor.grad).all(), (p.layer, p.index)
    test = Net(zoo_net(spec, data="dummy", test_batch=3), phase="TEST", seed=1)
    with torch.no_grad():
        outputs = test()
    accuracy = next(v for k, v in outputs.items() if "ccuracy" in k)
    assert 0 <= float(accuracy) <= 1
    # The deploy net takes the trained weights by layer name (BatchNorm statistics included: a fresh BatchNorm's
    # zero statistics would blow TEST-phase activations up, as in Caffe).
    deploy = Net(zoo_net(spec, deploy=True, deploy_batch=2), phase="TEST", seed=1)
    trained = {layer.name: [b.detach().numpy() for b in layer.blobs] for layer in train.layers if layer.blobs}
    assert copy_layer_blobs(deploy, trained, "train net").missing == []
    with torch.no_grad():
        prob = deploy(torch.randn(2, *deploy.blob_shapes["data"][1:]))["prob"]
    assert prob.shape == (2, *spec.prob[1:])
    torch.testing.assert_close(prob.sum(1), torch.ones(2, *spec.prob[2:]))


BIG = [s for s in SPECS if not s.small]


@pytest.mark.slow
@pytest.mark.parametrize("spec", BIG, ids=_ids(BIG))
def test_big_nets_build_with_fillers_and_run(spec):
    """The big nets for real: weights drawn by their fillers (seconds for 60-138M parameters), a TRAIN forward of
    one image (which also gives BatchNorm statistics), and the deploy net with those weights."""
    test = Net(zoo_net(spec, data="dummy", test_batch=1), phase="TEST", seed=1)
    assert _count(test) == (spec.train_params or spec.params)
    del test
    train = Net(zoo_net(spec, data="dummy", batch=2), phase="TRAIN", seed=1)
    with torch.no_grad():
        assert all(torch.isfinite(v) for v in train().values())
    deploy = Net(zoo_net(spec, deploy=True, deploy_batch=1), phase="TEST", seed=1)
    trained = {layer.name: [b.detach().numpy() for b in layer.blobs] for layer in train.layers if layer.blobs}
    assert copy_layer_blobs(deploy, trained, "train net").missing == []
    with torch.no_grad():
        prob = deploy(torch.randn(1, *deploy.blob_shapes["data"][1:]))["prob"]
    assert prob.shape == (1, *spec.prob[1:]) and torch.isfinite(prob).all()
