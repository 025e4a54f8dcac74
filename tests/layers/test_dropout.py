"""Dropout: TEST identity, TRAIN inverted dropout (fraction kept, 1 / (1 - ratio) scaling, diff masking), errors."""

import json

import numpy as np
import pytest
import torch
from conftest import SHARED
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError

RATIOS = [0.5, 0.3, 0.1, 0.9]


def dropout(ratio, shape, phase="TRAIN", seed=1701):
    net = single_layer_net(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}', {"x": shape}, phase=phase)
    layer = net.layer("under_test").float()
    layer.generator = torch.Generator().manual_seed(seed)
    return layer


@pytest.mark.parametrize("ratio", RATIOS)
def test_test_phase_is_identity_forward_and_backward(ratio):
    layer = dropout(ratio, (2, 3, 4, 4), phase="TEST")
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, x) and y is not x
    y.backward(torch.full_like(y, 3.0))
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


@pytest.mark.parametrize("ratio", RATIOS)
def test_train_keeps_the_right_fraction_and_scales_by_caffes_float_scale(ratio):
    n = 200_000
    layer = dropout(ratio, (n,))
    x = torch.rand(n) + 0.5  # no zeros, so a zero output means dropped
    y = layer(x)
    kept = y != 0
    sigma = (ratio * (1 - ratio) / n) ** 0.5
    assert abs(1 - kept.double().mean().item() - ratio) < 5 * sigma
    # Caffe: scale_ = 1. / (1. - threshold_) stored as float; kept units are x * scale_, bitwise.
    scale = np.float32(1.0 / (1.0 - float(np.float32(ratio))))
    assert np.array_equal(y[kept].numpy(), x[kept].numpy() * scale)


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_train_backward_uses_the_same_mask_and_scale(ratio):
    layer = dropout(ratio, (4, 50))
    x = (torch.rand(4, 50) + 0.5).requires_grad_(True)
    y = layer(x)
    upstream = torch.randn(4, 50)
    y.backward(upstream)
    scale = np.float32(1.0 / (1.0 - float(np.float32(ratio))))
    expected = torch.where(y != 0, upstream * torch.tensor(scale), torch.zeros_like(upstream))
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=0)


def test_train_masks_follow_the_generator():
    a, b = dropout(0.5, (1000,), seed=7), dropout(0.5, (1000,), seed=7)
    x = torch.ones(1000)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(first, a(x))  # a new mask on every forward


def test_train_matches_caffes_recorded_summary():
    folder = SHARED / "caffe-reference/forward/cov_dropout_test"
    if not folder.exists():
        pytest.skip("../shared absent")
    check = json.loads((folder / "meta.json").read_text())["train_phase_check"]
    with np.load(folder / "input.npz") as npz:
        x = torch.from_numpy(npz["x"])
    ratio = check["dropout_ratio"]
    y = dropout(ratio, tuple(x.shape))(x)
    kept = y != 0
    # Caffe zeroed 53% of these 96 units; any draw within 4 sigma of the ratio is the same behaviour.
    assert abs((~kept).double().mean().item() - ratio) < 4 * (ratio * (1 - ratio) / x.numel()) ** 0.5
    assert abs(check["fraction_zeroed"] - ratio) < 4 * (ratio * (1 - ratio) / x.numel()) ** 0.5
    assert check["kept_values_equal_x_times_1_over_(1-ratio)_bitwise"]
    assert np.array_equal(y[kept].numpy(), x[kept].numpy() * np.float32(1 / (1 - ratio)))


def test_gradcheck_train_with_a_fixed_mask():
    # Each gradcheck evaluation draws a new mask, so freeze it: ratio 0 keeps everything (scale 1).
    check_layer_gradients('type: "Dropout" dropout_param { dropout_ratio: 0 }', {"x": (2, 3, 4)})
    check_layer_gradients('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', {"x": (2, 3, 4)}, phase="TEST")


def test_gradcheck_train_masked():
    layer = dropout(0.5, (3, 7)).double()
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)

    def run(t):
        layer.generator.manual_seed(11)  # the same mask on every call
        return layer(t)

    assert torch.autograd.gradcheck(run, (x,))


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_bad_ratio(ratio):
    with pytest.raises(NetBuildError, match="dropout_ratio"):
        dropout(ratio, (2, 3))
