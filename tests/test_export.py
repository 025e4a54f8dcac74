"""Export: safetensors state dicts, the torch.export-able DeployModule, ONNX (checked, run in onnxruntime), the
`convert` verb, and the model zoo converted from caffemodels we generate (the big nets are marked slow)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from conftest import ROOT

from pipeline.errors import NetBuildError, WeightsError
from pipeline.export import (
    ConvertRequest,
    DeployModule,
    ExportError,
    check_onnx,
    compare_onnx,
    convert,
    deploy_param,
    export_onnx,
    export_program,
    load_safetensors,
    net_from_safetensors,
    preprocessing,
    read_safetensors_metadata,
    save_safetensors,
    state_dict,
)
from pipeline.net import Net
from pipeline.prototxt import net_from_string, read_net
from pipeline.weights import save_caffemodel

ZOO = ROOT / "prototxt"
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
#: Templates with no deploy form: converted from their train/test net (data layers become an Input of this shape).
ZOO_TRAIN_TEST = {"hinton_mnist": (1, 1, 28, 28), "teacher_student": (1, 1, 28, 28)}


def _zoo_id(template, variables):
    return template + "".join(f"-{k}={x}" for k, x in variables.items())


# ----- safetensors -----------------------------------------------------------------------------------------------
EDGE_NET = """
name: "edge"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "block/conv" type: "Convolution" bottom: "x" top: "c" param { name: "shared_w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "block/conv2" type: "Convolution" bottom: "c" top: "c2" param { name: "shared_w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "c2" top: "c2" }
layer { name: "prelu" type: "PReLU" bottom: "c2" top: "c2" prelu_param { channel_shared: true } }
layer { name: "ip" type: "InnerProduct" bottom: "c2" top: "y" inner_product_param { num_output: 4
        weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.5 } } }
"""


def edge_net(seed=3) -> Net:
    net = Net(net_from_string(EDGE_NET), phase="TEST", seed=seed)
    realistic_statistics(net, seed)
    return net


def test_safetensors_round_trip_is_bit_identical(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    net = edge_net()
    path = tmp_path / "edge.safetensors"
    save_safetensors(net, path, {"note": "x"})
    # The official reader sees Caffe's keys "<layer>/<blob index>" (layer names with '/' kept whole).
    loaded = load_file(path)
    assert sorted(loaded) == sorted(state_dict(net))
    assert "block/conv/0" in loaded and loaded["prelu/0"].shape == ()
    for key, value in state_dict(net).items():
        assert torch.equal(loaded[key], value), key
    with safe_open(path, "pt") as f:
        assert f.metadata()["note"] == "x" and f.metadata()["keys"] == "<layer>/<blob index>"
    fresh = Net(net_from_string(EDGE_NET), phase="TEST", seed=99)
    report = load_safetensors(fresh, path)
    assert report.missing == [] and report.ignored == []
    for a, b in zip(fresh.layers, net.layers):
        assert all(torch.equal(x, y) for x, y in zip(a.blobs, b.blobs)), a.name
    # Shared blobs stay shared after loading.
    assert fresh.layer("block/conv").weight is fresh.layer("block/conv2").weight


def test_safetensors_written_by_the_library_loads(tmp_path):
    from safetensors.torch import save_file

    net = edge_net()
    save_file({k: v.clone() for k, v in state_dict(net).items()}, tmp_path / "lib.safetensors")
    fresh = edge_net(seed=5)
    load_safetensors(fresh, tmp_path / "lib.safetensors")
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)["y"], net(x)["y"], rtol=0, atol=0)


def test_net_rebuilds_from_the_file_alone(tmp_path):
    out = tmp_path / "lenet.safetensors"
    net = zoo_deploy("lenet", deploy_batch=2)
    save_caffemodel(net, tmp_path / "lenet.caffemodel")
    result = convert(
        ConvertRequest(
            model=ZOO / "lenet.prototxt",
            weights=[tmp_path / "lenet.caffemodel"],
            to="pt",
            out=out,
            variables={"deploy": True, "deploy_batch": 2},
        )
    )
    assert result.out == out and "prototxt" in read_safetensors_metadata(out)
    rebuilt = net_from_safetensors(out)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["prob"], net(x)["prob"])


def _tensor_file(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


BAD_FILES = {
    "empty": (b"", "empty file"),
    "short": (b"\x01\x02", "too short"),
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "header length"),
    "not json": (struct.pack("<Q", 4) + b"\xff\xfe{]", "not valid JSON"),
    "bad dtype": (_tensor_file({"ip/0": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype"),
    "truncated data": (
        _tensor_file({"ip/0": {"dtype": "F32", "shape": [4, 75], "data_offsets": [0, 1200]}}, b"\0" * 100),
        "outside",
    ),
    "bad key": (
        _tensor_file({"ip": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "not '<layer>/<blob index>'",
    ),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_safetensors_files_give_our_error_naming_the_file(tmp_path, name):
    data, message = BAD_FILES[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=message) as info:
        load_safetensors(edge_net(), path)
    assert str(path) in str(info.value)


def test_safetensors_that_do_not_fit_the_net_name_the_layer(tmp_path):
    net = edge_net()
    path = tmp_path / "w.safetensors"
    tensors = state_dict(net)
    tensors["ip/0"] = torch.zeros(4, 7)
    tensors["unknown_layer/0"] = torch.zeros(2)
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    with pytest.raises(WeightsError, match=r"layer 'ip' blob 0: shape mismatch: file has \[4, 7\], net expects"):
        load_safetensors(edge_net(), path)
    del tensors["ip/0"], tensors["ip/1"]
    tensors["bn/3"] = torch.zeros(1)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    with pytest.raises(WeightsError, match=r"layer 'bn': incompatible number of blobs: file has 4, net expects 3"):
        load_safetensors(edge_net(), path)
    del tensors["bn/3"]
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    report = load_safetensors(edge_net(), path)
    assert report.ignored == ["unknown_layer"] and report.missing == ["ip"]


# ----- DeployModule and torch.export -----------------------------------------------------------------------------
def test_deploy_module_is_the_net_without_its_bookkeeping():
    net = zoo_deploy("resnet_cifar", deploy_batch=2)
    module = DeployModule(net)
    assert module.input_names == ["data"] and module.output_names == ["prob"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(module(x), net(x)["prob"])
    assert dict(module.named_parameters()).keys() <= {
        f"layers.{k}.{n}" for k in range(len(module.layers)) for n in ("weight", "bias")
    }
    with pytest.raises(ExportError, match="TRAIN phase"):
        DeployModule(Net(read_net(ZOO / "lenet.prototxt", {"deploy": True}), phase="TRAIN"))
    with pytest.raises(ExportError, match="takes 1 inputs"):
        module(x, x)
    with pytest.raises(ExportError, match="no blob 'nope'"):
        DeployModule(net, outputs=["nope"])


@pytest.mark.parametrize(
    "template, variables",
    [pytest.param("lenet", {}, id="lenet")]
    + [pytest.param(t, v, id=_zoo_id(t, v), marks=pytest.mark.slow) for t, v in ZOO_FAST[1:] + ZOO_SLOW],
)
def test_torch_export_with_a_dynamic_batch(template, variables):
    net = zoo_deploy(template, deploy_batch=2, **variables)
    program = export_program(net, batch=2, outputs=["prob", logits_blob(net)])
    exported = program.module()
    module = DeployModule(net, ["prob", logits_blob(net)])
    for batch in (1, 2, 5):
        x = torch.randn(batch, *net.blob_shapes["data"][1:])
        with torch.no_grad():
            for ours, theirs in zip(module(x), exported(x)):
                torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


# ----- every layer type a deploy net uses, exported --------------------------------------------------------------
def _net(body: str, inputs: dict[str, tuple[int, ...]]) -> str:
    lines = [
        f'layer {{ name: "in_{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in s)
        + " } } }"
        for n, s in inputs.items()
    ]
    return 'name: "layers"\n' + "\n".join(lines) + "\n" + body


G = 'weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "gaussian" std: 0.2 }'
LAYER_NETS = {
    "convolution": (
        f"""
layer {{ name: "conv_g" type: "Convolution" bottom: "x" top: "conv_g" convolution_param {{ num_output: 4 kernel_size: 3
         group: 2 pad: 1 stride: 2 {G} }} }}
layer {{ name: "conv_d" type: "Convolution" bottom: "x" top: "conv_d" convolution_param {{ num_output: 6 kernel_h: 3
         kernel_w: 2 dilation: 2 pad_h: 2 bias_term: false {G} }} }}
layer {{ name: "deconv" type: "Deconvolution" bottom: "x" top: "deconv" convolution_param {{ num_output: 4
         kernel_size: 4 stride: 2 pad: 1 group: 2 {G} }} }}
layer {{ name: "dw" type: "Convolution" bottom: "x" top: "dw" convolution_param {{ num_output: 4 kernel_size: 3 group: 4
         {G} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param {{ num_output: 5 {G} }} }}
layer {{ name: "ip_t" type: "InnerProduct" bottom: "x" top: "ip_t" inner_product_param {{ num_output: 3 axis: 2
         transpose: true {G} }} }}
""",
        {"x": (2, 4, 9, 11)},
    ),
    "pooling": (
        """
layer { name: "max_ceil" type: "Pooling" bottom: "x7" top: "max_ceil" pooling_param { pool: MAX kernel_size: 3 stride: 2
        pad: 1 } }
layer { name: "ave_ceil" type: "Pooling" bottom: "x7" top: "ave_ceil" pooling_param { pool: AVE kernel_size: 3 stride: 2
        pad: 1 } }
layer { name: "max_6" type: "Pooling" bottom: "x6" top: "max_6" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ave_6" type: "Pooling" bottom: "x6" top: "ave_6" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ave_clip" type: "Pooling" bottom: "x7" top: "ave_clip" pooling_param { pool: AVE kernel_size: 4
        stride: 3 pad: 2 } }
layer { name: "max_hw" type: "Pooling" bottom: "x7" top: "max_hw" pooling_param { pool: MAX kernel_h: 2 kernel_w: 3
        stride_h: 2 stride_w: 1 pad_w: 1 } }
layer { name: "global" type: "Pooling" bottom: "x7" top: "global" pooling_param { pool: AVE global_pooling: true } }
layer { name: "spp" type: "SPP" bottom: "x7" top: "spp" spp_param { pyramid_height: 3 } }
""",
        {"x7": (2, 3, 7, 7), "x6": (2, 3, 6, 6)},
    ),
    "neurons": (
        """
layer { name: "relu" type: "ReLU" bottom: "x" top: "relu" }
layer { name: "leaky" type: "ReLU" bottom: "x" top: "leaky" relu_param { negative_slope: 0.1 } }
layer { name: "prelu" type: "PReLU" bottom: "x" top: "prelu" prelu_param { filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "prelu_s" type: "PReLU" bottom: "x" top: "prelu_s" prelu_param { channel_shared: true } }
layer { name: "sigmoid" type: "Sigmoid" bottom: "x" top: "sigmoid" }
layer { name: "tanh" type: "TanH" bottom: "x" top: "tanh" }
layer { name: "elu" type: "ELU" bottom: "x" top: "elu" elu_param { alpha: 0.5 } }
layer { name: "abs" type: "AbsVal" bottom: "x" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "x" top: "bnll" }
layer { name: "power" type: "Power" bottom: "abs" top: "power" power_param { power: 1.5 scale: 2 shift: 0.5 } }
layer { name: "square" type: "Power" bottom: "x" top: "square" power_param { power: 2 scale: -1 } }
layer { name: "exp" type: "Exp" bottom: "x" top: "exp" exp_param { base: 2 scale: 0.5 shift: 1 } }
layer { name: "log" type: "Log" bottom: "sigmoid" top: "log" log_param { base: 10 } }
layer { name: "threshold" type: "Threshold" bottom: "x" top: "threshold" threshold_param { threshold: 0.3 } }
layer { name: "clip" type: "Clip" bottom: "x" top: "clip" clip_param { min: -0.5 max: 0.4 } }
layer { name: "swish" type: "Swish" bottom: "x" top: "swish" swish_param { beta: 1.5 } }
layer { name: "dropout" type: "Dropout" bottom: "x" top: "dropout" dropout_param { dropout_ratio: 0.3 } }
""",
        {"x": (2, 4, 3, 5)},
    ),
    "normalisation": (
        """
layer { name: "lrn" type: "LRN" bottom: "x" top: "lrn" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 } }
layer { name: "lrn_w" type: "LRN" bottom: "x" top: "lrn_w" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75
        norm_region: WITHIN_CHANNEL } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" }
layer { name: "bn_batch" type: "BatchNorm" bottom: "x" top: "bn_batch" batch_norm_param { use_global_stats: false } }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true
        filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "scale_2" type: "Scale" bottom: "x" bottom: "s" top: "scale_2" scale_param { axis: 1 } }
layer { name: "bias" type: "Bias" bottom: "x" top: "bias" bias_param { axis: 2 num_axes: 2
        filler { type: "gaussian" std: 1 } } }
layer { name: "mvn" type: "MVN" bottom: "x" top: "mvn" }
layer { name: "softmax" type: "Softmax" bottom: "x" top: "softmax" }
layer { name: "softmax_2" type: "Softmax" bottom: "x" top: "softmax_2" softmax_param { axis: 2 } }
""",
        {"x": (2, 7, 5, 5), "s": (7,)},
    ),
    "shapes": (
        """
layer { name: "eltsum" type: "Eltwise" bottom: "a" bottom: "b" top: "eltsum" eltwise_param { operation: SUM
        coeff: 1 coeff: -0.5 } }
layer { name: "eltprod" type: "Eltwise" bottom: "a" bottom: "b" top: "eltprod" eltwise_param { operation: PROD } }
layer { name: "eltmax" type: "Eltwise" bottom: "a" bottom: "b" bottom: "eltsum" top: "eltmax"
        eltwise_param { operation: MAX } }
layer { name: "concat" type: "Concat" bottom: "a" bottom: "eltmax" top: "concat" }
layer { name: "concat2" type: "Concat" bottom: "a" bottom: "b" top: "concat2" concat_param { axis: 2 } }
layer { name: "slice" type: "Slice" bottom: "concat" top: "slice1" top: "slice2" top: "slice3"
        slice_param { slice_point: 1 slice_point: 4 } }
layer { name: "flatten" type: "Flatten" bottom: "slice2" top: "flatten" }
layer { name: "reshape" type: "Reshape" bottom: "a" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "reshape_axis" type: "Reshape" bottom: "a" top: "reshape_axis" reshape_param { axis: 1 num_axes: 2
        shape { dim: 12 } } }
layer { name: "crop" type: "Crop" bottom: "a" bottom: "ref" top: "crop" crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "tile" type: "Tile" bottom: "b" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "reduce" type: "Reduction" bottom: "a" top: "reduce" reduction_param { operation: SUMSQ axis: 2 } }
layer { name: "argmax" type: "ArgMax" bottom: "a" top: "argmax" argmax_param { top_k: 2 out_max_val: true } }
layer { name: "argmax_ax" type: "ArgMax" bottom: "a" top: "argmax_ax" argmax_param { axis: 1 } }
layer { name: "im2col" type: "Im2col" bottom: "b" top: "im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "uses_a_twice" type: "Sigmoid" bottom: "a" top: "sig" }
""",
        {"a": (2, 3, 4, 6), "b": (2, 3, 4, 6), "ref": (2, 3, 2, 3)},
    ),
}


@pytest.mark.parametrize("group", LAYER_NETS)
def test_every_deploy_layer_type_exports(tmp_path, group):
    body, inputs = LAYER_NETS[group]
    net = Net(net_from_string(_net(body, inputs)), phase="TEST", seed=4)
    realistic_statistics(net)
    path = tmp_path / f"{group}.onnx"
    export_onnx(net, path)
    assert_onnx_matches(net, path)
    exported = export_program(net).module()
    module = DeployModule(net)
    for batch in (2, 3):
        args = module.example_inputs(batch, seed=batch)
        with torch.no_grad():
            for ours, theirs in zip(module(*args), exported(*args)):
                torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_a_layer_with_no_export_path_is_named():
    body = 'layer { name: "filter" type: "Filter" bottom: "x" bottom: "s" top: "y" }'
    net = Net(net_from_string(_net(body, {"x": (4, 3), "s": (4,)})), phase="TEST")
    with pytest.raises(ExportError, match=r"layer 'filter' \(Filter\): its output size depends"):
        export_onnx(net, "/nonexistent/never.onnx")


def test_onnx_options(tmp_path):
    net = zoo_deploy("lenet", deploy_batch=2)
    with pytest.raises(ExportError, match="opset 13"):
        export_onnx(net, tmp_path / "old.onnx", opset=13)
    export_onnx(net, tmp_path / "ext.onnx", opset=18, external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size == 431_080 * 4
    assert (tmp_path / "ext.onnx").stat().st_size < 100_000
    assert_onnx_matches(net, tmp_path / "ext.onnx", batches=(1,))
    import onnx

    model = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    assert model.opset_import[0].version == 18
    assert sorted(i.name for i in model.graph.initializer) == sorted(
        f"{n}/{i}" for n in ("conv1", "conv2", "ip1", "ip2") for i in (0, 1)
    )
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


# ----- deploy nets from train/test prototxts, preprocessing ------------------------------------------------------
def test_deploy_param_from_a_train_test_prototxt():
    train_test = read_net(ZOO / "lenet.prototxt")
    with pytest.raises(NetBuildError, match=r"layer 'mnist' \(Data\).*--input-shape data=1,3,224,224"):
        deploy_param(train_test)
    deploy = deploy_param(train_test, {"data": (5, 1, 28, 28)})
    net = Net(deploy, phase="TEST")
    assert net.input_names == ["data"] and net.output_names == ["ip2"]
    assert [layer.type for layer in deploy.layer][0] == "Input"
    assert not any(layer.type in ("Accuracy", "SoftmaxWithLoss") for layer in deploy.layer)
    # DummyData tells its own shapes; the label top and everything needing it are dropped.
    dummy = Net(deploy_param(read_net(ZOO / "resnet_cifar.prototxt", {"data": "dummy", "test_batch": 3})), "TEST")
    assert dummy.input_names == ["data"] and dummy.blob_shapes["data"] == (3, 3, 32, 32)
    # A deploy prototxt comes through as it is.
    original = read_net(ZOO / "mobilenet.prototxt", {"deploy": True})
    assert [layer.name for layer in deploy_param(original).layer] == [layer.name for layer in original.layer]


def test_preprocessing_is_read_from_the_data_layer():
    lenet = preprocessing(read_net(ZOO / "lenet.prototxt"), channels=1)
    assert (lenet.source, lenet.scale, lenet.mean_file, lenet.crop_size) == ("mnist", pytest.approx(0.00390625), "", 0)
    assert any("grey" in line for line in lenet.describe())
    caffenet = preprocessing(read_net(ZOO / "caffenet.prototxt", {"data_root": "/d"}), channels=3)
    assert (caffenet.crop_size, caffenet.mean_file, caffenet.mirror) == (
        227,
        "/d/ilsvrc12/imagenet_mean.binaryproto",
        True,
    )
    text = "; ".join(caffenet.describe())
    assert "subtract the mean image /d/ilsvrc12/imagenet_mean.binaryproto" in text and "centre crop 227x227" in text
    assert "random mirroring in training" in text
    assert "BGR" in text
    assert preprocessing(None).describe()[0].startswith("unknown")


# ----- the model zoo, converted from caffemodels we generate --------------------------------------------------------
ZOO_ALL = [pytest.param(t, v, id=_zoo_id(t, v)) for t, v in ZOO_FAST] + [
    pytest.param(t, v, id=_zoo_id(t, v), marks=pytest.mark.slow) for t, v in ZOO_SLOW
]


def test_zoo_lists_are_complete():
    templates = {p.stem for p in ZOO.glob("*.prototxt")} - {"macros"}
    assert templates == {t for t, _ in ZOO_FAST + ZOO_SLOW} | set(ZOO_TRAIN_TEST)


@pytest.mark.parametrize("template, variables", ZOO_ALL)
def test_zoo_deploy_net_converts_from_a_caffemodel(tmp_path, template, variables):
    variables = {**variables, "deploy": True, "deploy_batch": 1}
    net = zoo_deploy(template, **variables)
    weights = tmp_path / f"{template}.caffemodel"
    save_caffemodel(net, weights)
    request = dict(model=ZOO / f"{template}.prototxt", weights=[weights], variables=variables, verify=False)
    # The logits are output too: a saturated softmax would hide differences.
    outputs = ["prob", logits_blob(net)]
    onnx_result = convert(ConvertRequest(to="onnx", outputs=outputs, **request))
    assert onnx_result.missing == [] and onnx_result.out == tmp_path / f"{template}.onnx"
    assert_onnx_matches(onnx_result.net, onnx_result.out, outputs, batches=(1, 2))
    pt_result = convert(ConvertRequest(to="pt", **request))
    rebuilt = net_from_safetensors(pt_result.out)
    x = torch.randn(2, *net.blob_shapes["data"][1:])
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["prob"], net(x)["prob"])


@pytest.mark.parametrize("template", ZOO_TRAIN_TEST)
def test_zoo_train_test_net_converts_through_its_deploy_form(tmp_path, template):
    shape = ZOO_TRAIN_TEST[template]
    train = Net(read_net(ZOO / f"{template}.prototxt", {"data": "dummy", "batch": 2}), phase="TRAIN", seed=2)
    save_caffemodel(train, tmp_path / "trained.caffemodel")
    result = convert(
        ConvertRequest(
            model=ZOO / f"{template}.prototxt",
            weights=[tmp_path / "trained.caffemodel"],
            to="onnx",
            input_shapes={"data": shape},
        )
    )
    assert result.net.input_names == ["data"] and result.missing == []
    assert result.preprocessing.source == "mnist" and result.onnx_error <= TOL
    assert_onnx_matches(result.net, result.out, batches=(3,))


def test_mutated_safetensors_files_give_only_our_errors(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    net = edge_net()
    good = tmp_path / "good.safetensors"
    save_safetensors(net, good)
    original = good.read_bytes()
    bad = tmp_path / "mutated.safetensors"

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=8),
        st.integers(0, len(original)),
    )
    def run(edits, cut):
        data = bytearray(original[:cut] if cut < len(original) // 2 else original)
        for position, value in edits:
            if position < len(data):
                data[position] = value
        bad.write_bytes(bytes(data))
        try:
            load_safetensors(net, bad)
        except WeightsError:
            pass

    run()
