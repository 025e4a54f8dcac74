"""The zoo nets that re-create published Caffe models match those prototxts layer for layer and, loaded with the
weights the real Caffe ran, reproduce its blobs (../shared; skipped without it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_path
from model_zoo_util import FORMS, ZOO
from reference import scale_tolerance

from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.netspec import filter_net, net_state
from pipeline.text.prototxt import read_net
from pipeline.weights.io import copy_layer_blobs, read_npz_weights


# ----- against the published originals (../shared) ----------------------------------------------------------------
def _canonical(message):
    """A copy with every unset optional scalar written out, so that `pad: 0` equals no pad."""
    message = type(message).FromString(message.SerializeToString())
    for fd in message.DESCRIPTOR.fields:
        if fd.is_repeated:
            if fd.message_type is not None:
                items = [_canonical(m) for m in getattr(message, fd.name)]
                del getattr(message, fd.name)[:]
                getattr(message, fd.name).extend(items)
        elif fd.message_type is not None:
            if message.HasField(fd.name):
                getattr(message, fd.name).CopyFrom(_canonical(getattr(message, fd.name)))
        else:
            setattr(message, fd.name, getattr(message, fd.name))
    if isinstance(message, caffe_pb2.ConvolutionParameter):
        # Repeated geometry fields: none given means Caffe's default; one value stands for every axis.
        for name, default in (("pad", 0), ("stride", 1), ("dilation", 1)):
            values = set(getattr(message, name)) or {default}
            if len(values) == 1:
                del getattr(message, name)[:]
                getattr(message, name).append(values.pop())
    return message


def _layers(net, phase, rename=None, fillers=True):
    """Name -> canonical layer of the net's `phase` form, data layers left out, blobs renamed."""
    rename = rename or {}
    result = {}
    for layer in filter_net(net, net_state(net, phase)).layer:
        if not layer.bottom:
            continue
        layer = _canonical(layer)
        layer.ClearField("include")  # the phase filter has done its work
        layer.name = rename.get(layer.name, layer.name)
        for blobs in (layer.bottom, layer.top):
            renamed = [rename.get(b, b) for b in blobs]
            del blobs[:]
            blobs.extend(renamed)
        if layer.type == "BatchNorm":  # the zoo writes Caffe's implicit lr_mult 0 and phase-default stats out
            layer.ClearField("param")
            layer.ClearField("batch_norm_param")
        if layer.type in ("Convolution", "InnerProduct"):
            p = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
            for f in (p.weight_filler, p.bias_filler):
                f.std = round(f.std, 3)  # ResNet's He std: 0.083 in the file, 0.0833 here
            if not fillers:
                p.ClearField("weight_filler")
                p.ClearField("bias_filler")
        result[layer.name] = layer
    return result


DATA_BLOBS = {"Data1": "data", "Data2": "label"}
MINI = {f"{kind}_t_{i}": f"{kind}{i}" for kind in ("conv", "pool", "relu", "norm", "ip") for i in (1, 2, 3)}
QUICK = "caffe-models/cifar10_quick_v1/"  # V1 files: upgraded on reading
FULL = "caffe-models/cifar10_full_h5/cifar10_full_train_test.prototxt"
RESNET20 = "caffe-models/resnet20_cifar/res20_cifar_train_test.prototxt"
MOBILENET = "caffe-models/mobilenet_cifar/"
ORIGINALS = [
    # (template, form, original under ../shared, phase, blob/layer renames, same layer list, compare fillers)
    ("lenet", "deploy", "caffe-models/lenet_v2/lenet.prototxt", "TEST", {}, True, True),
    ("cifar10_quick", "lmdb", QUICK + "cifar10_quick_train_test.prototxt", "TEST", {}, True, True),
    ("cifar10_quick", "deploy", QUICK + "cifar10_quick.prototxt", "TEST", {}, True, False),
    ("cifar10_full", "lmdb", FULL, "TRAIN", {}, True, True),
    ("cifar10_full", "lmdb", FULL, "TEST", {}, True, True),
    ("cifar10_full", "deploy", "caffe-models/cifar10_full_h5/cifar10_full.prototxt", "TEST", {}, True, False),
    ("cifar10_mini", "lmdb", "seedrepo/cifar10/models/cifar10_mini.prototxt", "TEST", MINI, True, True),
    ("resnet_cifar", "lmdb", RESNET20, "TRAIN", DATA_BLOBS, True, True),
    ("resnet_cifar", "lmdb", RESNET20, "TEST", DATA_BLOBS, True, True),
    ("mobilenet", "lmdb", MOBILENET + "train.prototxt", "TRAIN", DATA_BLOBS, True, True),
    ("mobilenet", "lmdb", MOBILENET + "test.prototxt", "TEST", DATA_BLOBS, True, True),
    ("mobilenet", "deploy", MOBILENET + "deploy.prototxt", "TEST", {"Softmax1": "prob"}, True, True),
    ("caffenet", "lmdb", "seedrepo/imagenet/alexnet-VGG/alexnet.prototxt", "TRAIN", {}, True, True),
    # The study's NIN teacher sits inside its teacher-student net: compare the layers the two share.
    ("nin", "lmdb", "seedrepo/cifar10/models/ts_cifar10_nin.prototxt", "TRAIN", {}, False, True),
]


@pytest.mark.parametrize(
    "template, form, original, phase, rename, same_list, fillers",
    ORIGINALS,
    ids=[f"{o[0]}-{o[1]}-{o[3]}" for o in ORIGINALS],
)
def test_matches_the_published_prototxt(template, form, original, phase, rename, same_list, fillers):
    path = shared_path(*original.split("/"))
    theirs = _layers(read_net(path), phase, rename, fillers)
    variables = {"variant": "alexnet"} if "alexnet" in original else {}
    ours = _layers(read_net(ZOO / f"{template}.prototxt", {**variables, **FORMS[form]}), phase, fillers=fillers)
    if same_list:
        assert list(ours) == list(theirs)
    else:
        ours = {k: v for k, v in ours.items() if k in theirs and v.type not in ("SoftmaxWithLoss", "Accuracy")}
        assert len(ours) >= 20
    for name, layer in ours.items():
        assert layer == theirs[name], f"layer {name}:\nours {layer}\ntheirs {theirs[name]}"


# (template, variables, caffe-reference case): the zoo's deploy net with the weights the real Caffe ran.
REFERENCE = [
    ("lenet", {}, "lenet_ethereon"),
    ("cifar10_quick", {}, "cifar10_quick_everpeace"),
    ("cifar10_full", {}, "cifar10_full_jwcom79_h5"),
    ("resnet_cifar", {}, "resnet20_junyuseu"),
    ("mobilenet", {}, "mobilenet_cifar_lijianfei"),
]


@pytest.mark.parametrize("template, variables, case", REFERENCE, ids=[r[0] for r in REFERENCE])
def test_deploy_net_with_published_weights_reproduces_caffe(template, variables, case):
    folder = shared_path("caffe-reference", "forward", case)
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "input.npz") as npz:
        image = npz["data" if "data" in npz.files else "Data1"]
    net = Net(
        read_net(ZOO / f"{template}.prototxt", {**variables, "deploy": True, "deploy_batch": image.shape[0]}),
        phase="TEST",
        seed=0,
    )
    report = copy_layer_blobs(net, read_npz_weights(folder / "weights.npz"), str(folder))
    assert report.missing == [], "zoo layers the published model has no weights for"
    with torch.no_grad():
        prob = net(torch.from_numpy(image))["prob"]
    compared = 0
    with np.load(folder / "blobs.npz") as blobs:
        for name in blobs.files:
            if name in net.blob_shapes and name != "data":
                ours = net.blobs[name].data.numpy()
                assert ours.shape == blobs[name].shape, name
                assert np.abs(ours - blobs[name]).max() <= scale_tolerance(blobs[name]), name
                compared += 1
        expected = meta.get("predicted_classes") or blobs["InnerProduct1"].argmax(1).tolist()
    assert compared >= 5
    assert prob.argmax(1).tolist() == expected
