"""Every prototxt of the original 2017 study (../shared/seedrepo) parses, and every net builds once its data layers
read synthetic data instead of the study's LMDBs. One file is malformed as committed: its error must point at it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import SHARED, shared_path

import pipeline.net.layers.base as layer_base
from pipeline.errors import PrototxtError
from pipeline.net import Net
from pipeline.net.fillers import check_filler
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import read_net, read_solver

SEEDREPO = SHARED / "seedrepo"
FILES = sorted(str(p.relative_to(SEEDREPO)) for p in SEEDREPO.rglob("*.prototxt")) if SEEDREPO.exists() else []
MALFORMED = "imagenet/alexnet-VGG/ts_vgg16_train_val.prototxt"
# Image size of each dataset as its LMDB holds it (a transform's crop_size overrides height and width).
DATASET_DIMS = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "imagenet": (3, 256, 256)}
DATA_LAYERS = ("Data", "ImageData", "HDF5Data", "WindowData")


def is_net(text: str) -> bool:
    """Net or solver, by content: a net has layers (or legacy `input:` fields), a solver has none."""
    return re.search(r"^\s*(layers?\s*\{|input\s*:)", text, re.MULTILINE) is not None


def seed_path(name: str) -> Path:
    return shared_path("seedrepo", *name.split("/"))


NETS = [f for f in FILES if f != MALFORMED and is_net((SEEDREPO / f).read_text())]
SOLVERS = [f for f in FILES if f != MALFORMED and f not in NETS]


def with_dummy_data(net: caffe_pb2.NetParameter, dims: tuple[int, int, int]) -> caffe_pb2.NetParameter:
    """The net with each data-source layer replaced by DummyData of the same batch and item shape (after crop):
    Gaussian images and all-zero labels."""
    net = type(net).FromString(net.SerializeToString())
    for layer in net.layer:
        if layer.type not in DATA_LAYERS:
            continue
        batch = layer.data_param.batch_size or layer.image_data_param.batch_size or layer.hdf5_data_param.batch_size
        crop = layer.transform_param.crop_size
        channels, height, width = dims if not crop else (dims[0], crop, crop)
        for field in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param", "transform_param"):
            layer.ClearField(field)
        layer.type = "DummyData"
        dummy = layer.dummy_data_param
        dummy.data_filler.add(type="gaussian", std=1)
        dummy.data_filler.add(type="constant", value=0)
        dummy.shape.add().dim.extend([batch, channels, height, width])
        for _ in layer.top[1:]:
            dummy.shape.add().dim.extend([batch])
        if len(layer.top) == 1:
            del dummy.data_filler[1:]
    return net


def dummy_net(name: str) -> caffe_pb2.NetParameter:
    return with_dummy_data(read_net(seed_path(name)), DATASET_DIMS[name.split("/")[0]])


@pytest.fixture
def shapes_only(monkeypatch):
    """Build without drawing weights (blobs on torch's meta device), so the VGG-16 nets cost no time or memory."""

    def fill(param, shape, generator=None):
        check_filler(param, tuple(shape))
        return torch.empty(tuple(int(d) for d in shape), device="meta")

    monkeypatch.setattr(layer_base, "fill", fill)


def test_the_study_is_all_here():
    if not SEEDREPO.exists():
        pytest.skip(f"{SEEDREPO} not available (../shared absent)")
    assert len(NETS) == 15 and len(SOLVERS) == 9 and MALFORMED in FILES


@pytest.mark.parametrize("name", NETS or ["<no ../shared>"])
def test_net_parses(name):
    net = read_net(seed_path(name))
    assert net.layer and not net.layers  # V1 files come out upgraded
    assert sum(layer.type in DATA_LAYERS for layer in net.layer) == 2  # one per phase


@pytest.mark.parametrize("name", SOLVERS or ["<no ../shared>"])
def test_solver_parses(name):
    solver = read_solver(seed_path(name))
    assert solver.net.endswith(".prototxt") and solver.base_lr > 0 and solver.max_iter > 0


def test_malformed_file_error_points_at_the_field():
    path = seed_path(MALFORMED)
    with pytest.raises(PrototxtError) as caught:
        read_net(path)
    error = caught.value
    assert (error.path, error.line, error.column) == (str(path), 368, 5)
    assert str(error).startswith(f"{path}:368:5: ")
    line = path.read_text().splitlines()[error.line - 1]
    assert line[error.column - 1 :].startswith("param")
    # The layer, the message and the field at fault, and the nearest valid field.
    for part in ("conv_st_1_1", "ConvolutionParameter", '"param"', "pad"):
        assert part in str(error)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("name", NETS or ["<no ../shared>"])
def test_net_builds_on_dummy_data(name, phase, shapes_only):
    param = dummy_net(name)
    net = Net(param, phase=phase)
    assert net.layers[0].type_name == "DummyData"
    # Every loss is a scalar output (vgg16_dummy.prototxt, a shape check of the study's, has no loss at all).
    losses = [layer.top_names[0] for layer in net.layers if layer.is_loss]
    assert set(losses) <= set(net.output_names) and all(net.blob_shapes[b] == () for b in losses)
    assert losses or name.endswith("vgg16_dummy.prototxt")


SMALL = [n for n in NETS if not n.startswith("imagenet/")]


@pytest.mark.parametrize("name", SMALL or ["<no ../shared>"])
def test_small_nets_train_a_step_on_dummy_data(name):
    """MNIST and CIFAR-10 nets for real (filled weights, batch 2): a forward and backward pass. Every parameter on
    the path to a loss's scores gets a gradient; frozen ones (lr_mult 0: the teachers) get none."""
    param = dummy_net(name)
    for layer in param.layer:
        if layer.type == "DummyData":
            for shape in layer.dummy_data_param.shape:
                shape.dim[0] = 2
    net = Net(param, phase="TRAIN", seed=1)
    net()
    assert net.loss is not None and torch.isfinite(net.loss)
    net.backward()
    # Layers upstream of a weighted loss's first bottom (its scores; the second is a label or a target).
    producers = {top: layer for layer in net.layers for top in layer.top_names}
    todo = [layer.bottom_names[0] for layer, weights in zip(net.layers, net.loss_weights) if any(weights)]
    trained = set()
    while todo:
        layer = producers.get(todo.pop())
        if layer is not None and layer.name not in trained:
            trained.add(layer.name)
            todo.extend(layer.bottom_names)
    for p in net.learnable_params:
        if p.lr_mult == 0:
            assert p.tensor.grad is None, (p.layer, p.index)
        elif p.layer in trained:
            assert p.tensor.grad is not None and torch.isfinite(p.tensor.grad).all(), (p.layer, p.index)
    assert any(p.tensor.grad is not None for p in net.learnable_params)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NETS if n.startswith("imagenet/")] or ["<no ../shared>"])
def test_imagenet_nets_build_with_fillers(name):
    """The AlexNet and VGG-16 nets with their weights drawn (up to 200M parameters: seconds each)."""
    for phase in ("TRAIN", "TEST"):
        net = Net(dummy_net(name), phase=phase, seed=1)
        assert all(torch.isfinite(b).all() for layer in net.layers for b in layer.blobs)
