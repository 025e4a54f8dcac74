"""The net builder behaves like Caffe's Net: rules, splits, loss weights, in-place, backward needs, sharing."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string

IP = 'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} }}'


def ip(name, bottom, n=3, extra=""):
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {IP.format(n=n)} {extra} }}\n'
    )


def build(text, phase="TRAIN", **kwargs):
    return Net(net_from_string(text), phase=phase, seed=3, **kwargs)


INPUT = (
    'layer { name: "in" type: "Input" top: "x" top: "t" '
    "input_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 3 } } }\n"
)
LOSS = 'layer {{ name: "loss" type: "EuclideanLoss" bottom: "{a}" bottom: "t" top: "loss" {extra} }}\n'


def test_blob_read_twice_gets_a_caffe_split_and_summed_gradient():
    net = build(
        INPUT
        + ip("a", "x")
        + ip("b", "a")
        + ip("c", "a")
        + LOSS.format(a="b", extra="")
        + 'layer { name: "loss2" type: "EuclideanLoss" bottom: "c" bottom: "t" top: "loss2" }\n'
    )
    types = [layer.type_name for layer in net.layers]
    assert "Split" in types
    assert "a_a_0_split_0" in net.blobs and "a_a_0_split_1" in net.blobs
    x, t = torch.randn(4, 5), torch.randn(4, 3)
    net.retain_diffs = True
    net(x=x, t=t)
    net.backward()
    total = net.blobs["a_a_0_split_0"].diff + net.blobs["a_a_0_split_1"].diff
    torch.testing.assert_close(net.blobs["a"].diff, total)


def test_loss_weights_default_and_explicit():
    text = INPUT + ip("a", "x") + LOSS.format(a="a", extra="loss_weight: 0.5")
    net = build(text)
    x, t = torch.randn(4, 5), torch.randn(4, 3)
    net(x=x, t=t)
    euclid = ((net.blobs["a"].data - t) ** 2).sum() / (2 * 4)
    torch.testing.assert_close(net.loss, 0.5 * euclid)
    assert net.loss_weights[-1] == [0.5]
    plain = build(INPUT + ip("a", "x") + LOSS.format(a="a", extra=""))
    assert plain.loss_weights[-1] == [1.0] and plain.loss_weights[1] == [0.0]


def test_non_loss_top_with_loss_weight_counts_in_total():
    net = build(INPUT + ip("a", "x", extra="loss_weight: 2"))
    net(x=torch.ones(4, 5))
    torch.testing.assert_close(net.loss, 2 * net.blobs["a"].data.sum())


def test_in_place_layer_keeps_final_data_and_pre_layer_diff():
    text = (
        INPUT + ip("a", "x") + 'layer { name: "r" type: "ReLU" bottom: "a" top: "a" }\n' + LOSS.format(a="a", extra="")
    )
    net = build(text)
    net.retain_diffs = True
    net(x=torch.randn(4, 5), t=torch.randn(4, 3))
    net.backward()
    data, diff = net.blobs["a"].data, net.blobs["a"].diff
    assert (data >= 0).all()
    assert diff.shape == (4, 3)
    # Gradient w.r.t. the InnerProduct output: zero where ReLU cut it.
    assert torch.all(diff[data == 0] == 0)


def test_propagate_down_false_stops_the_gradient():
    text = INPUT + ip("a", "x") + ip("b", "a", extra="propagate_down: false") + LOSS.format(a="b", extra="")
    net = build(text)
    net(x=torch.randn(4, 5), t=torch.randn(4, 3))
    net.backward()
    assert net.params["a"][0].grad is None
    assert net.params["b"][0].grad is not None


def test_force_backward_gives_input_diffs():
    net = build("force_backward: true\n" + INPUT + ip("a", "x") + LOSS.format(a="a", extra=""))
    net.retain_diffs = True
    net(x=torch.randn(4, 5), t=torch.randn(4, 3))
    net.backward()
    assert net.blobs["x"].diff.abs().sum() > 0
    plain = build(INPUT + ip("a", "x") + LOSS.format(a="a", extra=""))
    plain(x=torch.randn(4, 5), t=torch.randn(4, 3))
    assert not plain.blobs["x"].data.requires_grad


def test_frozen_branch_records_no_autograd_graph():
    frozen = "param { lr_mult: 0 } param { lr_mult: 0 }"
    text = (
        INPUT
        + ip("teacher1", "x", extra=frozen)
        + ip("teacher2", "teacher1", extra=frozen)
        + ip("student", "x")
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "student" bottom: "teacher2" '
        'top: "loss" }\n'
    )
    net = build(text)
    net(x=torch.randn(4, 5), t=torch.randn(4, 3))
    assert net.blobs["teacher2"].data.grad_fn is None
    assert net.blobs["student"].data.grad_fn is not None
    assert [p.layer for p in net.learnable_params if p.lr_mult] == ["student", "student"]


def test_layers_feeding_no_loss_run_without_autograd():
    net = build(INPUT + ip("a", "x") + ip("side", "x") + LOSS.format(a="a", extra=""))
    net(x=torch.randn(4, 5), t=torch.randn(4, 3))
    assert net.blobs["side"].data.grad_fn is None
    assert "side" in net.output_names and "loss" in net.output_names


def test_parameters_shared_by_name_accumulate_gradients():
    shared = 'param { name: "w" } param { name: "b" }'
    net = build(
        INPUT
        + ip("a", "x", extra=shared)
        + ip("c", "x", extra=shared)
        + 'layer { name: "s" type: "Eltwise" bottom: "a" bottom: "c" top: "s" }\n'
        + LOSS.format(a="s", extra="")
    )
    assert net.params["a"][0] is net.params["c"][0]
    assert len(net.learnable_params) == 2


def test_include_exclude_rules_by_phase_stage_and_level():
    text = (
        INPUT
        + ip("train_only", "x", extra="include { phase: TRAIN }")
        + ip("test_only", "x", extra="include { phase: TEST }")
        + ip("deploy", "x", extra='include { stage: "deploy" }')
        + ip("not_deploy", "x", extra='exclude { stage: "deploy" }')
        + ip("level2", "x", extra="include { min_level: 2 }")
    )
    names = lambda net: {layer.name for layer in net.layers}  # noqa: E731
    assert {"train_only", "not_deploy"} <= names(build(text)) and "test_only" not in names(build(text))
    assert "deploy" in names(build(text, stages=["deploy"])) and "not_deploy" not in names(
        build(text, stages=["deploy"])
    )
    assert "level2" in names(build(text, level=2)) and "level2" not in names(build(text))
    assert "test_only" in names(build(text, phase="TEST"))


def test_pycaffe_style_access_by_name():
    net = build(INPUT + ip("a", "x", n=7) + LOSS.format(a="a", extra="").replace('"t"', '"a"'))
    assert net.params["a"][0].shape == (7, 5) and net.params["a"][1].shape == (7,)
    assert net.blobs["a"].shape == (4, 7)
    net.blobs["x"].data = torch.ones(4, 5)
    net()
    assert torch.equal(net.blobs["x"].data, torch.ones(4, 5))


def test_unknown_bottom_names_layer_and_blob():
    with pytest.raises(NetBuildError, match=r"layer 'a'.*unknown bottom blob 'nope'"):
        build(INPUT + ip("a", "nope"))


def test_shape_mismatch_names_layer_blobs_and_shapes():
    with pytest.raises(NetBuildError) as info:
        build(INPUT + ip("a", "x", n=4) + LOSS.format(a="a", extra=""))
    message = str(info.value)
    assert "loss" in message and "[4, 4]" in message and "[4, 3]" in message


def test_unknown_layer_type_lists_known_types():
    with pytest.raises(NetBuildError) as info:
        build(INPUT + 'layer { name: "q" type: "Convolutoin" bottom: "x" top: "q" }')
    assert "Convolutoin" in str(info.value) and "Convolution" in str(info.value) and "InnerProduct" in str(info.value)


def test_bad_layer_parameter_is_a_build_error_naming_the_layer():
    with pytest.raises(NetBuildError, match=r"layer 'c' \(Convolution\).*group 3"):
        build(
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 5 dim: 5 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "x" top: "c" '
            "convolution_param { num_output: 6 kernel_size: 3 group: 3 } }"
        )


def test_legacy_input_fields_build():
    net = build('input: "data"\ninput_shape { dim: 2 dim: 5 }\n' + ip("a", "data"))
    assert net.input_names == ["data"] and net.blobs["a"].shape == (2, 3)


def test_double_precision_and_repr():
    net = build(INPUT + ip("a", "x") + LOSS.format(a="a", extra="")).double()
    out = net(x=torch.randn(4, 5, dtype=torch.float64), t=torch.randn(4, 3, dtype=torch.float64))
    assert out["loss"].dtype == torch.float64
    assert "InnerProduct" in repr(net) and "weight=[3, 5]" in repr(net)


SHARED_CONVS = """
layer { name: "in" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 2 dim: 2 dim: 5 dim: 5 } shape { dim: 2 dim: 1 dim: 5 dim: 5 } } }
layer { name: "a" type: "Convolution" bottom: "x" top: "a" param { name: "w" }
        convolution_param { num_output: 4 kernel_size: 3 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "c" type: "Convolution" bottom: "y" top: "c" param { name: "w" MODE }
        convolution_param { num_output: 8 kernel_size: 3 bias_term: false } }
layer { name: "la" type: "Reduction" bottom: "a" top: "la" loss_weight: 1 }
layer { name: "lc" type: "Reduction" bottom: "c" top: "lc" loss_weight: 1 }
"""


def test_sharing_a_parameter_of_another_shape_needs_permissive_mode():
    with pytest.raises(NetBuildError, match=r"layer 'c'.*shares parameter 'w' with layer 'a'.*\[8, 1, 3, 3\] vs"):
        Net(net_from_string(SHARED_CONVS.replace("MODE", "")), phase="TRAIN")
    net = Net(net_from_string(SHARED_CONVS.replace("MODE", "share_mode: PERMISSIVE")), phase="TRAIN").double()
    owner, view = net.params["a"][0], net.params["c"][0]
    assert view.shape == (8, 1, 3, 3) and view.dtype == torch.float64 and view.data_ptr() == owner.data_ptr()
    assert len(net.learnable_params) == 1
    x, y = torch.randn(2, 2, 5, 5, dtype=torch.float64), torch.randn(2, 1, 5, 5, dtype=torch.float64)
    for _ in range(2):  # the view is made afresh each pass: a second backward works too
        net.clear_param_diffs()
        net(x=x, y=y)
        net.loss.backward()
        both = torch.autograd.grad(F.conv2d(x, owner).sum() + F.conv2d(y, owner.reshape(8, 1, 3, 3)).sum(), owner)[0]
        torch.testing.assert_close(owner.grad, both)
