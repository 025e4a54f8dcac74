"""Im2col (layout against unfold and convolution) and SPP (against an independent loop version of Caffe's pooling)."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path
from gradcheck_util import check_layer_gradients, single_layer_net
from reference import run_case

from pipeline.errors import NetBuildError


def im2col_body(kernel, stride, pad, dilation):
    return (
        f'type: "Im2col" convolution_param {{ kernel_size: {kernel} stride: {stride} pad: {pad} dilation: {dilation} }}'
    )


@pytest.mark.parametrize("kernel,stride,pad,dilation", list(itertools.product([1, 2, 3], [1, 2], [0, 1, 2], [1, 2])))
def test_im2col_2d_matches_caffes_loop(kernel, stride, pad, dilation):
    shape = (2, 3, 5, 6)
    body = im2col_body(kernel, stride, pad, dilation)
    net = single_layer_net(body, {"x": shape})
    x = torch.randn(shape, dtype=torch.float64)
    top = net.layer("under_test")(x)
    out = [(s + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1 for s in shape[2:]]
    assert net.blob_shapes["top0"] == (2, 3 * kernel * kernel, *out)
    # im2col_cpu: row c * k * k + ki * k + kj holds x[c, oh * stride - pad + ki * dilation, ...], zero outside.
    padded = F.pad(x, (pad, pad, pad, pad))
    expected = torch.zeros(2, 3 * kernel * kernel, *out, dtype=torch.float64)
    for c, ki, kj in itertools.product(range(3), range(kernel), range(kernel)):
        for oh, ow in itertools.product(range(out[0]), range(out[1])):
            row = oh * stride + ki * dilation
            expected[:, (c * kernel + ki) * kernel + kj, oh, ow] = padded[:, c, row, ow * stride + kj * dilation]
    torch.testing.assert_close(top, expected, rtol=0, atol=0)


def test_im2col_bottom_diff_equals_caffes_bit_for_bit():
    # Overlapping patches add up in col2im_cpu's order (kernel offset outer, output position inner).
    folder = shared_path("caffe-reference", "forward", "cov_im2col")
    _, net = run_case(folder, backward=True)
    with np.load(folder / "grads.npz") as grads:
        expected = grads["blob:x"]
    np.testing.assert_array_equal(net.blobs["x"].diff.numpy().reshape(expected.shape), expected)


@pytest.mark.parametrize(
    "body",
    [
        im2col_body(3, 2, 1, 1),
        im2col_body(2, 1, 0, 2),
        'type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_w: 1 }',
    ],
)
def test_im2col_gradients(body):
    check_layer_gradients(body, {"x": (2, 2, 5, 4)})


@pytest.mark.parametrize(
    "shape,fields",
    [
        ((2, 2, 4, 5, 3), "kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 2 pad: 1"),
        ((2, 3, 7), "kernel_size: 3 dilation: 2 pad: 1"),
        ((2, 2, 6, 5), "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"),
    ],
)
def test_im2col_times_weights_is_convolution(shape, fields):
    # The column layout is what Caffe multiplies by the (C_out, C * prod(kernel)) weights.
    layer = single_layer_net(f'type: "Im2col" convolution_param {{ {fields} }}', {"x": shape}).layer("under_test")
    conv = single_layer_net(
        f'type: "Convolution" convolution_param {{ num_output: 4 bias_term: false {fields} '
        'weight_filler { type: "gaussian" } }',
        {"x": shape},
    ).layer("under_test")
    x = torch.randn(shape, dtype=torch.float64)
    cols = layer(x)
    product = torch.einsum("ok,nk...->no...", conv.weight.reshape(4, -1), cols)
    torch.testing.assert_close(product, conv(x))
    check_layer_gradients(f'type: "Im2col" convolution_param {{ {fields} }}', {"x": shape})


def test_im2col_axis_keeps_leading_axes():
    layer = single_layer_net(
        'type: "Im2col" convolution_param { kernel_size: 2 axis: 2 }', {"x": (2, 3, 4, 5, 6)}
    ).layer("under_test")
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    top = layer(x)
    expected = F.unfold(x.reshape(6, 4, 5, 6), 2).view(2, 3, 16, 4, 5)
    torch.testing.assert_close(top, expected)


@pytest.mark.parametrize(
    "fields,message",
    [
        ("stride: 1", "kernel"),
        ("kernel_size: 2 stride_h: 2", "stride must be positive"),
        ("kernel_size: 7", "empty"),
        ("kernel_size: 2 kernel_h: 2 kernel_w: 2", "not both"),
        ("kernel_size: 2 kernel_size: 2 kernel_size: 2", "3 values"),
    ],
)
def test_im2col_bad_parameters(fields, message):
    with pytest.raises(NetBuildError, match=message):
        single_layer_net(f'type: "Im2col" convolution_param {{ {fields} }}', {"x": (2, 3, 5, 6)})


# ----- SPP -------------------------------------------------------------------------------------------------------
def caffe_pool(x, kernel, stride, pad, method):
    """Loop version of Caffe's PoolingLayer forward (ceil rounding, window clipping, AVE divisor)."""
    n, c, h, w = x.shape
    out = []
    for size, k, s, p in zip((h, w), kernel, stride, pad):
        o = int(math.ceil((size + 2 * p - k) / s)) + 1
        if p and (o - 1) * s >= size + p:
            o -= 1
        out.append(o)
    top = np.zeros((n, c, *out))
    for i, j in itertools.product(range(out[0]), range(out[1])):
        hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
        he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
        area = (he - hs) * (we - ws)
        window = x[:, :, max(hs, 0) : min(he, h), max(ws, 0) : min(we, w)]
        top[:, :, i, j] = window.max(axis=(2, 3)) if method == "MAX" else window.sum(axis=(2, 3)) / area
    return top


def caffe_spp(x, height, method):
    levels = []
    for level in range(height):
        bins = 2**level
        kernel = [math.ceil(s / bins) for s in x.shape[2:]]
        pad = [(k * bins - s + 1) // 2 for k, s in zip(kernel, x.shape[2:])]
        levels.append(caffe_pool(x, kernel, kernel, pad, method))
    if height == 1:
        return levels[0]
    return np.concatenate([lv.reshape(x.shape[0], -1) for lv in levels], axis=1)


@pytest.mark.parametrize(
    "height,method,hw", list(itertools.product([1, 2, 3], ["MAX", "AVE"], [(7, 9), (8, 8), (6, 7)]))
)
def test_spp_matches_caffe_pooling(height, method, hw):
    shape = (2, 3, *hw)
    body = f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}'
    net = single_layer_net(body, {"x": shape})
    x = torch.randn(shape, dtype=torch.float64)
    top = net.layer("under_test")(x)
    expected = caffe_spp(x.numpy(), height, method)
    assert net.blob_shapes["top0"] == expected.shape
    # atol too: an AVE bin of random values can sum to nearly zero, where float64 rounding is not relatively small.
    np.testing.assert_allclose(top.numpy(), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("height,method", list(itertools.product([1, 2, 3], ["MAX", "AVE"])))
def test_spp_gradients(height, method):
    body = f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}'
    check_layer_gradients(body, {"x": (1, 2, 7, 6)}, fast_mode=True)


def test_spp_output_size_and_new_input_size():
    net = single_layer_net('type: "SPP" spp_param { pyramid_height: 3 }', {"x": (2, 3, 7, 9)})
    assert net.blob_shapes["top0"] == (2, 3 * 21)
    layer = net.layer("under_test")
    x = torch.randn(1, 3, 12, 10, dtype=torch.float64)
    np.testing.assert_allclose(layer(x).numpy(), caffe_spp(x.numpy(), 3, "MAX"), rtol=1e-12)


@pytest.mark.parametrize(
    "body,shape,message",
    [
        ('type: "SPP" spp_param { pyramid_height: 3 }', (2, 3, 3, 9), "too small"),
        ('type: "SPP" spp_param { pyramid_height: 0 }', (2, 3, 8, 8), "at least 1"),
        ('type: "SPP" spp_param { pyramid_height: 2 }', (2, 3, 8), "4-D"),
    ],
)
def test_spp_bad_input(body, shape, message):
    with pytest.raises(NetBuildError, match=message):
        single_layer_net(body, {"x": shape})
