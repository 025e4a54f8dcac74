"""BatchNorm: batch and global statistics, the running-statistics update (against Caffe's recorded values),
Caffe's backward (float64 gradchecks), the scale-factor-0 edge case, buffers, and set-up errors."""

import itertools

import numpy as np
import pytest
import torch
from conftest import SHARED
from gradcheck_util import check_layer_gradients, single_layer_net
from reference import run_case

from pipeline.errors import NetBuildError

SHAPES = [(4, 3, 2, 3), (6, 4), (3, 2, 5), (2, 2, 2, 2, 2)]


def bn(param="", shape=(4, 3, 2, 3), phase="TRAIN", stats=None):
    net = single_layer_net(f'type: "BatchNorm" batch_norm_param {{ {param} }}', {"x": shape}, phase=phase)
    layer = net.layer("under_test")
    if stats is not None:
        with torch.no_grad():
            for blob, value in zip(layer.blobs, stats):
                blob.copy_(torch.as_tensor(value, dtype=blob.dtype))
    return net, layer


def randn(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5 + 0.7


def channel_dims(x):
    return [0, *range(2, x.dim())]


def per_channel(v, x):
    return torch.as_tensor(v, dtype=x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


# ----- against Caffe's recorded running statistics -----------------------------------------------------------------
@pytest.mark.parametrize("case", ["cov_batchnorm_train", "cov_batchnorm_test"])
def test_running_stats_after_forward_match_caffe(case):
    folder = SHARED / "caffe-reference/forward" / case
    if not folder.exists():
        pytest.skip("../shared absent")
    _, net = run_case(folder, backward=True)
    with np.load(folder / "stats_after_forward.npz") as after, np.load(folder / "weights.npz") as before:
        assert after.files
        for key in after.files:
            layer, _, index = key.rpartition("/")
            ours = net.params[layer][int(index)].detach().numpy().reshape(after[key].shape)
            np.testing.assert_allclose(ours, after[key], rtol=1e-6, atol=1e-6, err_msg=key)
            # Only the layers with batch statistics changed them.
            assert np.array_equal(before[key], after[key]) == net.layer(layer).use_global_stats, key


# ----- forward formulas --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, eps", list(itertools.product(SHAPES, [1e-5, 1e-2])))
def test_batch_statistics_forward(shape, eps):
    _, layer = bn(f"eps: {eps}", shape)
    x = randn(shape)
    var, mean = torch.var_mean(x, dim=channel_dims(x), correction=0, keepdim=True)
    eps32 = float(np.float32(eps))
    torch.testing.assert_close(layer(x), (x - mean) / torch.sqrt(var + eps32), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_global_statistics_forward_uses_sums_over_scale_factor(shape):
    c = shape[1]
    mean_sum, var_sum, factor = np.linspace(-1, 1, c), np.linspace(0.5, 2, c), 2.5
    _, layer = bn("", shape, phase="TEST", stats=(mean_sum, var_sum, [factor]))
    x = randn(shape)
    expected = (x - per_channel(mean_sum / factor, x)) / torch.sqrt(per_channel(var_sum / factor, x) + 1e-5)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-7)
    assert layer.scale_factor.item() == factor  # global statistics are read, never updated


def test_scale_factor_zero_means_zero_mean_and_variance():
    _, layer = bn("use_global_stats: true", stats=([5.0, 6.0, 7.0], [9.0, 9.0, 9.0], [0.0]))
    x = randn((4, 3, 2, 3))
    torch.testing.assert_close(layer(x), x / np.sqrt(np.float32(1e-5)), rtol=1e-6, atol=0)
    assert torch.all(torch.isfinite(layer(x)))


# ----- running statistics ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase, maf", list(itertools.product(["TRAIN", "TEST"], [0.999, 0.9, 0.0])))
def test_running_sums_update_with_bias_correction(phase, maf):
    shape = (4, 3, 2, 3)
    param = f"moving_average_fraction: {maf}" + (" use_global_stats: false" if phase == "TEST" else "")
    b0, b1, b2 = np.array([0.5, -1.0, 2.0]), np.array([3.0, 1.0, 0.5]), 2.0
    _, layer = bn(param, shape, phase=phase, stats=(b0, b1, [b2]))
    maf = float(np.float32(maf))
    m = 4 * 2 * 3
    for step in range(2):
        x = randn(shape, seed=step)
        var, mean = torch.var_mean(x, dim=channel_dims(x), correction=0)
        layer(x)
        b2 = maf * b2 + 1
        b0 = maf * b0 + mean.numpy()
        b1 = maf * b1 + m / (m - 1) * var.numpy()
        np.testing.assert_allclose(layer.scale_factor.numpy(), [b2], rtol=1e-12)
        np.testing.assert_allclose(layer.mean_sum.numpy(), b0, rtol=1e-12)
        np.testing.assert_allclose(layer.variance_sum.numpy(), b1, rtol=1e-12)


def test_single_value_per_channel_has_no_bias_correction():
    _, layer = bn("", (1, 3))
    y = layer(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    assert torch.equal(y, torch.zeros_like(y))  # var 0: (x - mean) / sqrt(eps) = 0
    assert torch.equal(layer.variance_sum, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(layer.mean_sum, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "param, phase, expected",
    [
        ("", "TRAIN", False),
        ("", "TEST", True),
        ("use_global_stats: true", "TRAIN", True),
        ("use_global_stats: false", "TEST", False),
    ],
)
def test_use_global_stats_default_follows_phase(param, phase, expected):
    assert bn(param, phase=phase)[1].use_global_stats is expected


# ----- gradients ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, phase", list(itertools.product(SHAPES, ["TRAIN", "TEST"])))
def test_gradcheck_batch_statistics(shape, phase):
    param = "eps: 0.001" + (" use_global_stats: false" if phase == "TEST" else "")
    check_layer_gradients(f'type: "BatchNorm" batch_norm_param {{ {param} }}', {"x": shape}, phase=phase)


@pytest.mark.parametrize("shape, factor", list(itertools.product(SHAPES[:2], [1.7, 0.0])))
def test_gradcheck_global_statistics(shape, factor):
    c = shape[1]
    _, layer = bn("use_global_stats: true", shape, stats=(np.linspace(-1, 1, c), np.linspace(0.5, 2, c), [factor]))
    assert torch.autograd.gradcheck(layer, (randn(shape).requires_grad_(True),))


def test_backward_is_caffes_formula():
    _, layer = bn("", (4, 3, 2, 3))
    x = randn((4, 3, 2, 3)).requires_grad_(True)
    y = layer(x)
    dy = randn((4, 3, 2, 3), seed=5)
    y.backward(dy)
    dims = channel_dims(x)
    std = torch.sqrt(torch.var(x.detach(), dim=dims, correction=0, keepdim=True) + float(np.float32(1e-5)))
    y = y.detach()
    expected = (dy - dy.mean(dims, keepdim=True) - (dy * y).mean(dims, keepdim=True) * y) / std
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_statistics_are_buffers_not_learnable():
    net, layer = bn("")
    assert [type(b) for b in layer.blobs] == [torch.Tensor] * 3
    assert [tuple(b.shape) for b in layer.blobs] == [(3,), (3,), (1,)]
    assert not net.learnable_params
    x = randn((4, 3, 2, 3)).requires_grad_(True)
    layer(x).sum().backward()
    assert all(b.grad is None and not b.requires_grad for b in layer.blobs)


def test_float32_stats_stay_float32():
    layer = bn("")[1].float()
    layer(torch.randn(4, 3, 2, 3))
    assert all(b.dtype == torch.float32 for b in layer.blobs)


# ----- errors ------------------------------------------------------------------------------------------------------
def test_learning_the_statistics_is_refused():
    text = 'type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }'
    with pytest.raises(NetBuildError, match="lr_mult"):
        single_layer_net(text, {"x": (4, 3)})
    single_layer_net('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }', {"x": (4, 3)})


def test_one_axis_bottom_is_refused():
    with pytest.raises(NetBuildError, match="at least 2 axes") as info:
        single_layer_net('type: "BatchNorm"', {"x": (6,)})
    assert "under_test" in str(info.value)
