"""Shared pieces of the export tests: zoo deploy nets with realistic BatchNorm statistics, the zoo template lists,
and the check that an ONNX file matches the net it was exported from (in onnxruntime)."""

from __future__ import annotations

import torch
from model_zoo_util import ZOO

from pipeline.export import DeployModule, check_onnx, compare_onnx
from pipeline.net import Net
from pipeline.text.prototxt import read_net

TOL = 1e-4


def zoo_deploy(template: str, seed: int = 1, **variables) -> Net:
    """A zoo deploy net with filler weights and BatchNorm statistics of a trained net's size (a fresh BatchNorm's
    zero statistics would make every output saturate, and the comparisons meaningless)."""
    net = Net(read_net(ZOO / f"{template}.prototxt", {"deploy": True, **variables}), phase="TEST", seed=seed)
    realistic_statistics(net, seed)
    return net


def realistic_statistics(net: Net, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            if layer.type_name == "BatchNorm":
                layer.mean_sum.copy_(torch.randn(layer.mean_sum.shape, generator=generator) * 0.1)
                layer.variance_sum.copy_(torch.rand(layer.variance_sum.shape, generator=generator) + 0.5)
                layer.scale_factor.fill_(1.0)


def logits_blob(net: Net) -> str:
    """The blob the final Softmax reads (compared too: a saturated softmax would hide differences)."""
    last = net.layers[-1]
    return last.bottom_names[0] if last.type_name == "Softmax" else net.output_names[0]


def assert_onnx_matches(net: Net, path, outputs=None, batches=(2, 3)):
    check_onnx(path)
    module = DeployModule(net, outputs)
    for batch in batches:
        comparison = compare_onnx(module, path, module.example_inputs(batch, seed=batch))
        assert comparison.ok(TOL), comparison.errors


ZOO_FAST = [
    ("lenet", {}),
    ("cifar10_quick", {}),
    ("cifar10_full", {}),
    ("cifar10_mini", {}),
    ("nin", {}),
    ("resnet_cifar", {}),
    ("mobilenet", {}),
    ("mlp", {}),
]
ZOO_SLOW = [
    ("squeezenet", {}),
    ("mobilenet", {"variant": "imagenet"}),
    ("resnet_cifar", {"depth": 56}),
    ("caffenet", {}),
    ("caffenet", {"variant": "alexnet"}),
    ("vgg16", {}),
    ("googlenet", {}),
]


def _zoo_id(template, variables):
    return template + "".join(f"-{k}={x}" for k, x in variables.items())
