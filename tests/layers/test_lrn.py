"""LRN: both norm regions against an independent loop implementation, float64 gradchecks, k ignored WITHIN_CHANNEL,
and set-up errors."""

import itertools

import numpy as np
import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError

SHAPE = (2, 5, 4, 6)


def body(region, size, alpha, beta, k):
    return f'type: "LRN" lrn_param {{ norm_region: {region} local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}'


def reference(x, region, n, alpha, beta, k):
    """Caffe's formulas with explicit windows (zero beyond the edges)."""
    x = np.asarray(x, dtype=np.float64)
    alpha, beta, k = (float(np.float32(v)) for v in (alpha, beta, k))  # the prototxt floats, as the layer reads them
    _, c, h, w = x.shape
    pad = (n - 1) // 2
    sq = x * x
    scale = np.empty_like(x)
    if region == "ACROSS_CHANNELS":
        for ch in range(c):
            window = sq[:, max(0, ch - pad) : min(c, ch + pad + 1)].sum(axis=1)
            scale[:, ch] = k + alpha / n * window
    else:
        for i, j in itertools.product(range(h), range(w)):
            window = sq[:, :, max(0, i - pad) : min(h, i + pad + 1), max(0, j - pad) : min(w, j + pad + 1)]
            scale[:, :, i, j] = 1 + alpha * window.sum(axis=(2, 3)) / (n * n)  # k is not used
    return x * scale**-beta


CASES = list(
    itertools.product(["ACROSS_CHANNELS", "WITHIN_CHANNEL"], [1, 3, 5, 7], [(1e-4, 0.75, 1.0), (0.5, 0.6, 2.0)])
)


@pytest.mark.parametrize("region, size, params", CASES)
def test_forward_matches_formula(region, size, params):
    alpha, beta, k = params
    net = single_layer_net(body(region, size, alpha, beta, k), {"x": SHAPE})
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(size), dtype=torch.float64) * 2
    y = net.layer("under_test")(x)
    np.testing.assert_allclose(y.numpy(), reference(x.numpy(), region, size, alpha, beta, k), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("region, size, params", CASES)
def test_gradcheck(region, size, params):
    check_layer_gradients(body(region, size, *params), {"x": (1, 4, 3, 4)})


def test_within_channel_ignores_k():
    x = torch.randn(SHAPE, dtype=torch.float64)
    outs = [
        single_layer_net(body("WITHIN_CHANNEL", 3, 1.0, 0.75, k), {"x": SHAPE}).layer("under_test")(x)
        for k in (1.0, 2.0, 5.0)
    ]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_float32_in_float32_out():
    net = single_layer_net(body("ACROSS_CHANNELS", 5, 1e-4, 0.75, 1.0), {"x": SHAPE}).float()
    assert net.layer("under_test")(torch.randn(SHAPE)).dtype == torch.float32


@pytest.mark.parametrize(
    "lrn_param, shape, message",
    [
        ("local_size: 4", SHAPE, "local_size must be odd"),
        ("local_size: 0", SHAPE, "local_size must be odd"),
        ("local_size: 2 norm_region: WITHIN_CHANNEL", SHAPE, "local_size must be odd"),
        ("local_size: 3", (2, 5, 4), "must have 4 axes"),
    ],
)
def test_bad_parameters(lrn_param, shape, message):
    with pytest.raises(NetBuildError, match=message) as info:
        single_layer_net(f'type: "LRN" lrn_param {{ {lrn_param} }}', {"x": shape})
    assert "under_test" in str(info.value)
