"""Embed, BatchReindex, Filter, Parameter, Silence: values, gradients (index bottoms get none), bad input."""

import itertools

import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string

EMBED = (
    'type: "Embed" embed_param {{ input_dim: {k} num_output: {n} bias_term: {bias} '
    'weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }}'
)


# ----- Embed -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,k,n,bias", list(itertools.product([(5,), (2, 5), (2, 1, 3)], [1, 4], [3], [True, False]))
)
def test_embed_lookup_and_gradients(shape, k, n, bias):
    body = EMBED.format(k=k, n=n, bias=str(bias).lower())
    net = single_layer_net(body, {"idx": shape})
    layer = net.layer("under_test")
    assert net.blob_shapes["top0"] == (*shape, n)
    assert layer.weight.shape == (k, n) and (layer.bias is not None) == bias
    assert [tuple(b.shape) for b in layer.blobs] == [(k, n)] + ([(n,)] if bias else [])
    idx = torch.randint(0, k, shape, generator=torch.Generator().manual_seed(0)).double()
    top = layer(idx)
    expected = layer.weight[idx.long()] + (layer.bias if bias else 0)
    torch.testing.assert_close(top, expected)
    check_layer_gradients(body, {"idx": shape}, inputs={"idx": idx}, wrt=[])


def test_embed_weight_gradient_accumulates_over_repeats_and_index_gets_none():
    layer = single_layer_net(EMBED.format(k=4, n=2, bias="true"), {"idx": (4,)}).layer("under_test")
    idx = torch.tensor([1.0, 3.0, 1.0, 1.9], dtype=torch.float64, requires_grad=True)  # 1.9 truncates to 1
    layer(idx).sum().backward()
    assert layer.weight.grad[:, 0].tolist() == [0.0, 3.0, 0.0, 1.0]
    assert layer.bias.grad.tolist() == [4.0, 4.0]
    assert idx.grad is None


@pytest.mark.parametrize("value", [4.0, -1.0, 10.0])
def test_embed_index_out_of_range(value):
    layer = single_layer_net(EMBED.format(k=4, n=2, bias="true"), {"idx": (2,)}).layer("under_test")
    with pytest.raises(NetBuildError, match=r"out of range \[0, 4\)"):
        layer(torch.tensor([0.0, value], dtype=torch.float64))


@pytest.mark.parametrize("fields", ["num_output: 3", "input_dim: 3"])
def test_embed_needs_sizes(fields):
    with pytest.raises(NetBuildError, match="must be set"):
        single_layer_net(f'type: "Embed" embed_param {{ {fields} }}', {"idx": (2,)})


# ----- BatchReindex ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [[0, 1, 2, 3], [3, 3, 0], [2], [1, 0, 1, 1, 3, 2]])
def test_batch_reindex_values_and_gradients(index):
    body = 'type: "BatchReindex"'
    shape = (4, 3, 2)
    net = single_layer_net(body, {"x": shape, "idx": (len(index),)})
    assert net.blob_shapes["top0"] == (len(index), 3, 2)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor(index, dtype=torch.float64)
    top = net.layer("under_test")(x, idx)
    torch.testing.assert_close(top, x.detach()[index])
    top.sum().backward()
    counts = torch.bincount(torch.tensor(index), minlength=4).double()
    torch.testing.assert_close(x.grad, counts.view(4, 1, 1).expand(shape))
    check_layer_gradients(body, {"x": shape, "idx": (len(index),)}, inputs={"idx": idx}, wrt=["x"])


def test_batch_reindex_bad_input():
    with pytest.raises(NetBuildError, match="must be 1-D"):
        single_layer_net('type: "BatchReindex"', {"x": (4, 3), "idx": (2, 1)})
    layer = single_layer_net('type: "BatchReindex"', {"x": (4, 3), "idx": (2,)}).layer("under_test")
    with pytest.raises(NetBuildError, match=r"out of range \[0, 4\)"):
        layer(torch.zeros(4, 3), torch.tensor([0.0, 4.0]))


# ----- Filter ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "selector,sel_shape,n_data",
    list(itertools.product([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0.5, -2, 0, 0]], [(4,), (4, 1)], [1, 2])),
)
def test_filter_values_and_gradients(selector, sel_shape, n_data):
    body = 'type: "Filter"'
    shapes = {"x": (4, 3, 2), "y": (4, 5)}
    bottoms = dict(list(shapes.items())[:n_data]) | {"sel": sel_shape}
    net = single_layer_net(body, bottoms, n_tops=n_data)
    assert [net.blob_shapes[f"top{i}"] for i in range(n_data)] == list(bottoms.values())[:n_data]
    sel = torch.tensor(selector, dtype=torch.float64).view(sel_shape)
    data = [torch.randn(s, dtype=torch.float64) for s in list(bottoms.values())[:n_data]]
    tops = net.layer("under_test")(*data, sel)
    tops = tops if isinstance(tops, tuple) else (tops,)
    keep = [i for i, s in enumerate(selector) if s != 0]
    for top, d in zip(tops, data):
        torch.testing.assert_close(top, d[keep])
    check_layer_gradients(body, bottoms, n_tops=n_data, inputs={"sel": sel}, wrt=list(bottoms)[:n_data])


def test_filter_in_a_net_has_data_dependent_shapes_and_zero_gradient_for_dropped_items():
    text = (
        'layer { name: "in" type: "Input" top: "x" top: "sel" '
        "input_param { shape { dim: 4 dim: 2 } shape { dim: 4 } } }\n"
        'layer { name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "f" }\n'
        'layer { name: "l" type: "Reduction" bottom: "f" top: "l" loss_weight: 0.5 '
        "reduction_param { operation: SUMSQ } }\nforce_backward: true"
    )
    net = Net(net_from_string(text))
    net.retain_diffs = True
    x = torch.randn(4, 2)
    net(x=x, sel=torch.tensor([0.0, 1.0, 0.0, 1.0]))
    net.backward()
    assert net.blobs["f"].shape == (2, 2)
    expected = x.clone()
    expected[[0, 2]] = 0
    torch.testing.assert_close(net.blobs["x"].diff, expected)
    assert not net.blobs["sel"].diff.any()


@pytest.mark.parametrize(
    "shapes,n_tops,message",
    [
        ({"x": (4, 3), "sel": (4, 2)}, 1, "size 1"),
        ({"x": (4, 3), "sel": (3,)}, 1, "as many items"),
        ({"x": (4, 3), "y": (4, 3), "sel": (4,)}, 1, "one top per"),
    ],
)
def test_filter_bad_input(shapes, n_tops, message):
    with pytest.raises(NetBuildError, match=message):
        single_layer_net('type: "Filter"', shapes, n_tops=n_tops)


# ----- Parameter, Silence ----------------------------------------------------------------------------------------
def test_parameter_is_a_learnable_zero_blob_whose_top_diff_is_its_gradient():
    text = (
        'layer { name: "in" type: "Input" top: "t" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "t" top: "loss" }'
    )
    net = Net(net_from_string(text))
    (value,) = net.params["p"]
    assert value.shape == (2, 3) and not value.any()
    assert [lp.layer for lp in net.learnable_params] == ["p"]
    t = torch.randn(2, 3)
    net(t=t)
    net.backward()
    torch.testing.assert_close(value.grad, -t / 2)
    check_layer_gradients('type: "Parameter" parameter_param { shape { dim: 3 } }', {})


def test_silence_takes_any_bottoms_and_makes_no_top():
    text = (
        'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 } } }\n'
        'layer { name: "s" type: "Silence" bottom: "a" bottom: "b" }'
    )
    net = Net(net_from_string(text))
    assert net(a=torch.ones(2), b=torch.ones(2)) == {}
    assert net.output_names == []
    with pytest.raises(NetBuildError, match="top"):
        Net(net_from_string(text.replace('bottom: "b" }', 'bottom: "b" top: "c" }')))
