"""Nets real BVLC Caffe 1.0 builds and runs, built and run here the same way: loss layers without tops, layer names
used twice, propagate_down forcing a gradient, 0-D convolution, a solver without lr_policy, FilterNet's output."""

import pytest
import torch
from solver_util import make, net_text, solver_param, tiny_folder

from pipeline.errors import NetBuildError, SolverError, WeightsError
from pipeline.exact import caffe_blas
from pipeline.net import AUTO_TOP, Net
from pipeline.proto import caffe_pb2
from pipeline.solvers import share_weights
from pipeline.text.netspec import filter_net, net_state
from pipeline.text.prototxt import net_from_string
from pipeline.text.upgrade import upgrade_net
from pipeline.weights.io import copy_weights, net_to_proto, save_caffemodel, save_caffemodel_h5

INPUT = (
    'layer { name: "in" type: "Input" top: "x" top: "t" '
    "input_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 3 } } }\n"
)


def ip(name, bottom, top=None, n=3):
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top or name}" '
        f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} '
        'bias_filler { type: "gaussian" std: 0.5 } } }\n'
    )


def build(text, phase="TRAIN", **kwargs):
    return Net(net_from_string(text), phase=phase, seed=3, **kwargs)


def feeds():
    gen = torch.Generator().manual_seed(0)
    return {"x": torch.randn(4, 5, generator=gen), "t": torch.randn(4, 3, generator=gen)}


# ----- 1. loss layers without a top ----------------------------------------------------------------------------
def test_loss_layer_without_top_gets_an_anonymous_top_counted_in_the_loss():
    """Caffe (src/caffe/net.cpp, Net::Init and Net::AppendTop): a layer whose AutoTopBlobs() is true (every
    LossLayer, include/caffe/layers/loss_layer.hpp) and that names fewer tops than max(MinTopBlobs,
    ExactNumTopBlobs) gets the rest appended as blobs named "(automatic)", left out of blob_name_to_idx and
    available_blobs (no later layer reads them, they are no net output). LossLayer::LayerSetUp gives the top
    loss_weight 1, so Net::Init counts it in the net's loss; the layer's own parameter keeps no top
    (Layer::ToProto writes layer_param_ as written)."""
    text = INPUT + ip("fc", "x") + 'layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "t" }\n'
    net = build(text)
    named = build(text.replace('bottom: "t" }', 'bottom: "t" top: "loss" }'))
    named.load_state_dict(net.state_dict())
    assert net.layer("loss").top_names == [AUTO_TOP]
    assert net.loss_weights[-1] == [1.0]
    assert AUTO_TOP in net.blobs and AUTO_TOP not in net.output_names
    assert net.output_names == []  # Caffe: "This network produces output" for no blob
    net.forward(**feeds())
    named.forward(**feeds())
    assert torch.equal(net.loss, named.loss)
    assert torch.equal(net.blobs[AUTO_TOP].data, named.blobs["loss"].data)
    net.backward()
    named.backward()
    assert torch.equal(net.layer("fc").weight.grad, named.layer("fc").weight.grad)
    saved = [layer for layer in net_to_proto(net).layer if layer.name == "loss"][0]
    assert list(saved.top) == [] and list(saved.loss_weight) == [1.0]


def test_anonymous_tops_of_two_loss_layers_both_count_and_none_is_readable():
    """Caffe (net.cpp, Net::AppendTop with no blob_name_to_idx): every anonymous top is its own blob, all named
    "(automatic)"; each carries its layer's loss weight into the total, and a bottom "(automatic)" is unknown
    (AppendBottom: "Unknown bottom blob")."""
    text = (
        INPUT
        + ip("fc", "x")
        + 'layer { name: "l2" type: "EuclideanLoss" bottom: "fc" bottom: "t" }\n'
        + 'layer { name: "l1" type: "EuclideanLoss" bottom: "fc" bottom: "t" loss_weight: 0.5 }\n'
    )
    net = build(text)
    net.forward(**feeds())
    single = (net.layer("fc")(feeds()["x"]) - feeds()["t"]).pow(2).sum() / 8
    torch.testing.assert_close(net.loss, 1.5 * single)
    with pytest.raises(NetBuildError, match=r"unknown bottom blob '\(automatic\)'"):
        build(text + 'layer { name: "s" type: "Silence" bottom: "(automatic)" }\n')


def test_softmax_loss_without_top_as_in_bvlc_finetune_pascal_and_upgraded_v0():
    """BVLC's examples/finetune_pascal_detection net ends in a SoftmaxWithLoss with no top, and so does a V0 net
    whose "softmax_loss" layer lists none; Caffe builds both (net.cpp Net::Init, AutoTopBlobs, after
    upgrade_proto.cpp's UpgradeV0Net), and the solver trains on the anonymous top's loss."""
    v0 = net_from_string(
        'name: "V0" input: "x" input: "label" input_dim: 4 input_dim: 5 input_dim: 1 input_dim: 1 '
        "input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1 "
        'layers { layer { name: "fc" type: "innerproduct" num_output: 3 weight_filler { type: "xavier" } } '
        'bottom: "x" top: "fc" } '
        'layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc" bottom: "label" }'
    )
    net = Net(upgrade_net(v0), seed=1)
    assert net.layer("loss").type_name == "SoftmaxWithLoss" and net.loss_weights[-1] == [1.0]
    net.forward(x=torch.randn(4, 5, 1, 1), label=torch.tensor([0.0, 1.0, 2.0, 1.0]).view(4, 1, 1, 1))
    assert net.loss is not None and net.loss.requires_grad


def test_solver_trains_a_net_whose_loss_has_no_top(tmp_path, monkeypatch):
    """Caffe's Solver::Step sums Net::ForwardBackward's loss, which counts anonymous loss tops (net.cpp
    Net::Init's blob_loss_weights_); with no output blob it displays only "Iteration N, loss = X"."""
    tiny_folder(tmp_path, monkeypatch)
    net = net_text().replace('bottom: "label" top: "loss" }', 'bottom: "label" }')
    solver = make(solver_param(net=net, max_iter=2, test_iter=[1], test_interval=2, snapshot_after_train=False))
    solver.solve()
    assert solver.iter == 2


# ----- 2. layer names used twice -------------------------------------------------------------------------------
DUPLICATES = (
    INPUT
    + ip("fc", "x", "fc_a")
    + ip("fc", "x", "fc_b")
    + 'layer { name: "loss" type: "EuclideanLoss" bottom: "fc_a" bottom: "t" top: "la" }\n'
    + 'layer { name: "loss" type: "EuclideanLoss" bottom: "fc_b" bottom: "t" top: "lb" loss_weight: 0 }\n'
)


def test_layer_names_used_twice_build_and_look_up_like_pycaffe():
    """Caffe's Net::Init (net.cpp) has no uniqueness check on layer names (BVLC's mnist_autoencoder.prototxt has
    two layers named "loss" in every phase). Net::layer_by_name looks names up in layer_names_index_, filled
    in layer order so the last layer of a name wins; pycaffe's net.params (python/caffe/pycaffe.py, _Net_params)
    is an OrderedDict over (name, blobs) pairs: the key sits where the first layer of the name is, holding the
    last one's blobs."""
    net = build(DUPLICATES)
    assert [layer.name for layer in net.layers if layer.type_name != "Split"] == ["in", "fc", "fc", "loss", "loss"]
    fc_a, fc_b = [layer for layer in net.layers if layer.name == "fc"]
    assert net.layer("fc") is fc_b and net.layer("loss").top_names == ["lb"]
    assert list(net.params) == ["fc"] and net.params["fc"] == fc_b.blobs
    net.forward(**feeds())
    torch.testing.assert_close(net.loss, net.blobs["la"].data)


def test_weights_of_duplicate_names_go_where_caffe_puts_them(tmp_path):
    """Caffe's Net::CopyTrainedLayersFrom(NetParameter) (net.cpp) scans layer_names_ from the start, so a
    caffemodel's layer fills the first layer of its name (the second keeps its weights); CopyTrainedLayersFromHDF5
    uses layer_names_index_, the last. Net::ToProto writes every layer (both "fc"), and Net::ToHDF5 fails on the
    second H5Gcreate2 of a name, which we refuse with a message."""
    source = build(DUPLICATES)
    with torch.no_grad():
        for i, layer in enumerate(layer for layer in source.layers if layer.name == "fc"):
            layer.weight.fill_(i + 1.0)
    save_caffemodel(source, tmp_path / "dup.caffemodel")
    written = caffe_pb2.NetParameter.FromString((tmp_path / "dup.caffemodel").read_bytes())
    assert [layer.name for layer in written.layer if layer.type == "InnerProduct"] == ["fc", "fc"]
    with pytest.raises(WeightsError, match="'fc', 'loss'.*more than once"):
        save_caffemodel_h5(source, tmp_path / "dup.h5")

    target = build(DUPLICATES)
    first, second = [layer for layer in target.layers if layer.name == "fc"]
    before = second.weight.detach().clone()
    report = copy_weights(target, tmp_path / "dup.caffemodel")
    assert torch.all(first.weight == 2.0)  # both file layers went to the first, the later one last
    assert torch.equal(second.weight, before)
    assert report.missing == ["fc"]

    single = build(INPUT + ip("fc", "x", "fc_a") + 'layer { name: "loss" type: "EuclideanLoss" bottom: "fc_a" '
                   'bottom: "t" top: "la" }\n')  # fmt: skip
    with torch.no_grad():
        single.layer("fc").weight.fill_(7.0)
    save_caffemodel_h5(single, tmp_path / "one.h5")
    target = build(DUPLICATES)
    first, second = [layer for layer in target.layers if layer.name == "fc"]
    before = first.weight.detach().clone()
    copy_weights(target, tmp_path / "one.h5")
    assert torch.all(second.weight == 7.0) and torch.equal(first.weight, before)


def test_test_net_shares_duplicate_names_as_caffe_scans_them():
    """Caffe's Net::ShareTrainedLayersWith (net.cpp): for each train-net layer in order, the first test-net layer
    of that name takes its blobs; so the first "fc" ends with the last train "fc"'s, and the second test "fc"
    keeps its own."""
    train, test = build(DUPLICATES), build(DUPLICATES, phase="TEST")
    share_weights(train, test)
    train_fc = [layer for layer in train.layers if layer.name == "fc"]
    test_fc = [layer for layer in test.layers if layer.name == "fc"]
    assert test_fc[0].weight is train_fc[1].weight
    assert test_fc[1].weight is not train_fc[0].weight and test_fc[1].weight is not train_fc[1].weight


# ----- 3. propagate_down: true ---------------------------------------------------------------------------------
def test_propagate_down_true_forces_a_gradient_nothing_else_needs():
    """Caffe's Net::AppendBottom (net.cpp): when propagate_down is given, bottom_need_backward is its value,
    whatever blob_need_backward_ says, so `true` on a bottom from an Input layer (or a branch with no learnable
    blob) makes the layer compute that bottom's diff; the producing layer still does not need backward, so
    nothing flows past it (Power's bottom x keeps a zero diff)."""
    text = (
        INPUT.replace("dim: 4 dim: 3", "dim: 4 dim: 5")
        + 'layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { scale: 2 } }\n'
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" FLAGS }\n'
    )
    x, t = torch.ones(4, 5), torch.zeros(4, 5)
    diffs = {}
    for flags in ("", "propagate_down: true propagate_down: false", "propagate_down: true propagate_down: true"):
        net = build(text.replace("FLAGS", flags))
        net.retain_diffs = True
        net.forward(x=x, t=t)
        net.backward()  # with no layer needing backward, Caffe's Net::Backward does nothing
        diffs[flags] = [net.blobs[b].diff for b in ("x", "y", "t")]
    zero = torch.zeros(4, 5)
    assert all(torch.equal(d, zero) for d in diffs[""])
    x_diff, y_diff, t_diff = diffs["propagate_down: true propagate_down: false"]
    assert torch.equal(x_diff, zero) and torch.equal(t_diff, zero)
    torch.testing.assert_close(y_diff, torch.full((4, 5), 0.5))  # (y - t) / num
    torch.testing.assert_close(diffs["propagate_down: true propagate_down: true"][2], torch.full((4, 5), -0.5))


def test_propagate_down_true_on_a_data_blob_reaches_it():
    """The same rule on a layer reading the Input top directly: Power with propagate_down: true computes x's diff
    (net.cpp Net::AppendBottom, then Net::Backward runs the layer since it contributes to the loss)."""
    text = (
        INPUT.replace("dim: 4 dim: 3", "dim: 4 dim: 5")
        + 'layer { name: "p" type: "Power" bottom: "x" top: "y" propagate_down: true power_param { scale: 2 } }\n'
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }\n'
    )
    net = build(text)
    net.retain_diffs = True
    net.forward(x=torch.ones(4, 5), t=torch.zeros(4, 5))
    net.backward()
    torch.testing.assert_close(net.blobs["x"].diff, torch.full((4, 5), 1.0))  # 2 * (2x - t) / 4
    with torch.no_grad():
        net.forward(x=torch.ones(4, 5), t=torch.zeros(4, 5))  # no autograd wanted: none made


# ----- 4. 0-D convolution --------------------------------------------------------------------------------------
CONV0 = (
    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }\n'
    'layer { name: "c" type: "TYPE" bottom: "x" top: "y" convolution_param { num_output: 6 group: 2 KERNEL '
    'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }\n'
)


@pytest.mark.parametrize("kernel", ["", "kernel_size: 3 stride: 2 pad: 1"])
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_convolution_with_no_spatial_axes_is_a_grouped_inner_product(kind, kernel):
    """Caffe's BaseConvolutionLayer::LayerSetUp (src/caffe/layers/base_conv_layer.cpp) allows
    num_spatial_axes_ == 0 (CHECK_GE): kernel_size given once or not at all, stride/pad/dilation ignored, the
    weight (conv_out_channels, conv_in_channels / group) and is_1x1_ true, so forward_cpu_gemm multiplies each
    row by the weight per group (Deconvolution by its transpose). Both modes compute it; the bit-exact mode's
    gemm loop gives what the default mode gives to float32 rounding."""
    net = build(CONV0.replace("TYPE", kind).replace("KERNEL", kernel))
    layer = net.layer("c")
    weight, bias = layer.weight.detach(), layer.bias.detach()
    assert tuple(weight.shape) == ((6, 2) if kind == "Convolution" else (4, 3))
    assert net.blob_shapes["y"] == (3, 6)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    halves = [x[:, :2], x[:, 2:]]
    if kind == "Convolution":
        expected = torch.cat([h @ weight[3 * g : 3 * g + 3].T for g, h in enumerate(halves)], 1) + bias
    else:
        expected = torch.cat([h @ weight[2 * g : 2 * g + 2] for g, h in enumerate(halves)], 1) + bias
    default = layer(x)
    torch.testing.assert_close(default, expected)
    if caffe_blas.available():
        with caffe_blas.exact_blas():
            xs = x.clone().requires_grad_(True)
            exact = layer(xs)
            exact.sum().backward()
        torch.testing.assert_close(exact, expected)
        assert xs.grad is not None and layer.weight.grad is not None


def test_zero_d_convolution_refuses_kernel_h_and_w():
    """base_conv_layer.cpp: kernel_h/kernel_w CHECK_EQ(num_spatial_axes_, 2)."""
    with pytest.raises(NetBuildError, match="kernel_h/kernel_w can only be used for 2-D"):
        build(CONV0.replace("TYPE", "Convolution").replace("KERNEL", "kernel_h: 1 kernel_w: 1"))


# ----- 5. a solver without lr_policy ---------------------------------------------------------------------------
def test_solver_without_lr_policy_builds_and_tests_until_it_must_step(tmp_path, monkeypatch):
    """Caffe checks lr_policy only in SGDSolver::GetLearningRate (src/caffe/solvers/sgd_solver.cpp: LOG(FATAL)
    "Unknown learning rate policy"), called by ApplyUpdate: a solver with max_iter 0 builds, runs its tests and
    finishes; one that steps fails at its first update."""
    tiny_folder(tmp_path, monkeypatch)
    param = solver_param(max_iter=0, test_iter=[1], snapshot_after_train=False)
    param.ClearField("lr_policy")
    solver = make(param)
    solver.solve()
    assert solver.iter == 0
    param.max_iter = 1
    with pytest.raises(SolverError, match="unknown lr_policy ''"):
        make(param).solve()


# ----- 6. FilterNet's output -----------------------------------------------------------------------------------
def test_filter_net_copies_the_net_as_written_with_no_state_added():
    """Caffe's Net::FilterNet (net.cpp) copies the NetParameter and keeps only the layers its own state admits:
    no `state` is added where the net had none, and a net's own state is kept as written."""
    param = net_from_string(
        'name: "n" layer { name: "a" type: "Input" top: "x" include { phase: TEST } '
        "input_param { shape { dim: 1 } } }\n"
        'layer { name: "b" type: "Input" top: "x" include { phase: TRAIN } input_param { shape { dim: 2 } } }\n'
    )
    filtered = filter_net(param, net_state(param, caffe_pb2.TEST))
    assert not filtered.HasField("state") and "state" not in str(filtered)
    assert [layer.name for layer in filtered.layer] == ["a"]
    param.state.phase = caffe_pb2.TRAIN
    own = filter_net(param)
    assert [layer.name for layer in own.layer] == ["b"] and str(own.state) == "phase: TRAIN\n"
