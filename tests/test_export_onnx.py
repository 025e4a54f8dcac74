"""Export to torch.export and ONNX: the DeployModule, a dynamic batch, every layer type a deploy net uses (checked
and run in onnxruntime), ONNX options; deploy nets from train/test prototxts and their preprocessing."""

from __future__ import annotations

import pytest
import torch
from export_util import ZOO_FAST, ZOO_SLOW, _zoo_id, assert_onnx_matches, logits_blob, realistic_statistics, zoo_deploy
from model_zoo_util import ZOO

from pipeline.errors import NetBuildError
from pipeline.export import DeployModule, ExportError, deploy_param, export_onnx, export_program, preprocessing
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string, read_net


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
