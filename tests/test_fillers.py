"""Fillers: our draws against real Caffe's statistics (../shared stats.json), the fan definitions, Caffe's checks.

Caffe's Boost RNG cannot be reproduced, so every statistic of our fill (same FillerParameter and shape, torch
seeded with Caffe's seeds 1701 and 2024) is compared with Caffe's within sampling error: Z = 5 standard errors
of the difference of two independent samples (hence sqrt(2)), with sigma the filler's theoretical per-element
std and n the element count:
  * mean: sqrt(2) Z sigma / sqrt(n).
  * std: sqrt(2) Z sigma sqrt((kurtosis - 1) / (4 n)), the large-n standard error of a sample std (kurtosis
    measured on our sample: 1.8 uniform, 3 gaussian, 3 / p for a gaussian kept with probability p).
  * fraction of zeros: sqrt(2) Z sqrt(p0 (1 - p0) / n), p0 = 1 - sparse / num_outputs (0 for dense: exact).
  * min/max of bounded fillers (uniform, xavier): inside the support and within 20 (hi - lo) / n of Caffe's
    (the gap between a sample extreme and its bound is about exponential with mean (hi - lo) / n).
  * min/max of gaussian fillers: sqrt(2) Z sigma pi / sqrt(6 * 2 ln m), the std of the extreme of m normal
    draws (Gumbel limit), m = the non-zero count.
  * positive_unitball: every row sums to 1 within 1e-5 (float32 rounding: Caffe's own sums are off by up to
    1.3e-6); max = ~1 / (smallest row sum), compared through the extreme of the row sums (std sqrt(dim / 12))
    as above; min inside [0, 20 / n / (dim / 2 - 6 sqrt(dim / 12))].
  * constant and bilinear are deterministic: equal within float32 rounding.
Caffe's own sample is also checked against sigma, so the tolerances rest on a verified theory.
"""

import itertools
import json
import math

import pytest
import torch
from conftest import shared_path
from gradcheck_util import single_layer_net

from pipeline.errors import NetBuildError
from pipeline.net.fillers import _fan_for, _fans, fill
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import parse_text

Z = 5.0
NAMES = [
    "constant", "uniform", "gaussian", "gaussian_sparse3", "xavier_fan_in", "xavier_fan_out", "xavier_average",
    "msra", "msra_fan_out", "bilinear", "positive_unitball",
]  # fmt: skip
SEEDS = ["seed_1701", "seed_2024"]
Filler = caffe_pb2.FillerParameter


@pytest.fixture(scope="module")
def stats():
    return json.loads(shared_path("caffe-reference", "forward", "cov_fillers_stats", "stats.json").read_text())


def draw(text: str, shape, seed: int) -> tuple[caffe_pb2.FillerParameter, torch.Tensor]:
    param = parse_text(text, Filler())
    return param, fill(param, tuple(shape), torch.Generator().manual_seed(seed)).double()


def expected_std(param, shape) -> float:
    if param.type == "uniform":
        return (param.max - param.min) / math.sqrt(12)
    if param.type == "gaussian":
        p = 1.0 if param.sparse < 0 else param.sparse / shape[0]
        return math.sqrt(p * (param.std**2 + param.mean**2) - (p * param.mean) ** 2)
    if param.type == "xavier":
        return math.sqrt(1 / _fan_for(param, shape))  # uniform(-a, a), a = sqrt(3 / n): std a / sqrt(3)
    if param.type == "msra":
        return math.sqrt(2 / _fan_for(param, shape))
    assert param.type == "positive_unitball"
    return 1 / math.sqrt(12) / (math.prod(shape) / shape[0] / 2)  # uniform(0, 1) over a row sum of ~dim / 2


def summary(values: torch.Tensor) -> dict[str, float]:
    centred = values - values.mean()
    return {
        "mean": float(values.mean()),
        "std": float(values.std(unbiased=False)),
        "min": float(values.min()),
        "max": float(values.max()),
        "fraction_zero": float((values == 0).double().mean()),
        "kurtosis": float((centred**4).mean() / (centred**2).mean() ** 2) if float(values.std()) else 0.0,
    }


def check_extremes(param, shape, values, ours, caffe, n) -> None:
    sigma = expected_std(param, shape)
    if param.type in ("uniform", "xavier"):
        if param.type == "uniform":
            lo, hi = param.min, param.max
        else:
            hi = math.sqrt(3 / _fan_for(param, shape))
            lo = -hi
        slack = 1e-6 * max(abs(lo), abs(hi))  # float32 rounding at the bounds
        for stats in (ours, caffe):
            assert lo - slack <= stats["min"] and stats["max"] <= hi + slack
        tol = 20 * (hi - lo) / n
    elif param.type == "gaussian" or param.type == "msra":
        m = int((values != 0).sum())
        scale = param.std if param.type == "gaussian" else sigma  # std of the non-zero draws
        tol = math.sqrt(2) * Z * scale * math.pi / math.sqrt(6 * 2 * math.log(m))
    else:  # positive_unitball
        rows, dim = shape[0], n // shape[0]
        spread = math.sqrt(dim / 12)
        low_sum = dim / 2 - 6 * spread
        for stats in (ours, caffe):
            assert 0 <= stats["min"] <= 20 / n / low_sum
        tol = math.sqrt(2) * Z * math.pi / math.sqrt(6 * 2 * math.log(rows)) * spread / (dim / 2) ** 2
        assert abs(ours["max"] - caffe["max"]) <= tol
        return
    for key in ("min", "max"):
        assert abs(ours[key] - caffe[key]) <= tol, f"{key}: ours {ours[key]:.6g}, Caffe {caffe[key]:.6g}, tol {tol:.3g}"


@pytest.mark.parametrize("name, seed", list(itertools.product(NAMES, SEEDS)))
def test_statistics_match_caffe(stats, name, seed):
    caffe = stats[name][seed]
    param, values = draw(caffe["filler"], caffe["shape"], int(seed.removeprefix("seed_")))
    n = caffe["count"]
    assert list(values.shape) == caffe["shape"] and values.numel() == n
    ours = summary(values)
    if param.type in ("constant", "bilinear"):
        for key in ("mean", "std", "min", "max", "fraction_zero"):
            assert ours[key] == pytest.approx(caffe[key], abs=1e-6), key
        return
    sigma = expected_std(param, tuple(caffe["shape"]))
    se_std = sigma * math.sqrt((ours["kurtosis"] - 1) / (4 * n))
    assert abs(caffe["std"] - sigma) <= Z * se_std, f"Caffe's std {caffe['std']:.6g} vs theory {sigma:.6g}"
    assert abs(ours["mean"] - caffe["mean"]) <= math.sqrt(2) * Z * sigma / math.sqrt(n)
    assert abs(ours["std"] - caffe["std"]) <= math.sqrt(2) * Z * se_std
    p0 = 1 - param.sparse / caffe["shape"][0] if param.sparse >= 0 else 0.0
    assert abs(ours["fraction_zero"] - caffe["fraction_zero"]) <= math.sqrt(2) * Z * math.sqrt(p0 * (1 - p0) / n)
    check_extremes(param, tuple(caffe["shape"]), values, ours, caffe, n)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith(("xavier", "msra"))])
def test_fans_match_caffe(stats, name):
    caffe = stats[name]["seed_1701"]
    param = parse_text(caffe["filler"], Filler())
    shape = tuple(caffe["shape"])
    assert _fans(shape) == (caffe["fan_in"], caffe["fan_out"])
    assert _fan_for(param, shape) == caffe["n_used"]


@pytest.mark.parametrize("seed", SEEDS)
def test_positive_unitball_rows_and_bilinear_values_match_caffe(stats, seed):
    caffe = stats["positive_unitball"][seed]
    _, values = draw(caffe["filler"], caffe["shape"], int(seed.removeprefix("seed_")))
    sums = values.reshape(values.shape[0], -1).sum(dim=1)
    assert len(caffe["row_sums"]) == len(sums)
    assert max(abs(s - 1) for s in caffe["row_sums"]) <= 1e-5 and float((sums - 1).abs().max()) <= 1e-5
    caffe = stats["bilinear"][seed]
    _, values = draw(caffe["filler"], caffe["shape"], 0)
    assert values[0, 0].tolist() == caffe["values_channel0"]
    assert bool((values == values[:1, :1]).all()) == caffe["all_channels_identical"]


def test_default_bias_filler_is_zero_as_in_caffe(stats):
    assert all(
        stats[name]["bias_default_filler_all_zero"] for name in NAMES if "bias_default_filler_all_zero" in stats[name]
    )
    bodies = (
        'type: "InnerProduct" inner_product_param { num_output: 5 weight_filler { type: "xavier" } }',
        'type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "msra" } }',
    )
    for body in bodies:
        bias = single_layer_net(body, {"x": (2, 3, 2, 2)}).layer("under_test").blobs[1]
        assert not bias.any()


# ----- no ../shared needed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, fan_in, fan_out",
    [((64, 32, 3, 3), 288, 576), ((10, 20), 20, 10), ((2, 3, 4, 5), 60, 40), ((7,), 1, 7), ((), 1, 1)],
)
def test_fans_are_count_over_axis_0_and_axis_1(shape, fan_in, fan_out):
    assert _fans(shape) == (fan_in, fan_out)


@pytest.mark.parametrize("kind, norm", list(itertools.product(["xavier", "msra"], ["FAN_IN", "FAN_OUT", "AVERAGE"])))
def test_xavier_and_msra_scale_with_the_chosen_fan(kind, norm):
    shape = (40, 25, 3, 3)  # fan_in 225, fan_out 360
    n = {"FAN_IN": 225, "FAN_OUT": 360, "AVERAGE": 292.5}[norm]
    param = Filler(type=kind, variance_norm=getattr(Filler, norm))
    assert _fan_for(param, shape) == n
    values = fill(param, shape, torch.Generator().manual_seed(0)).double()
    count, std = values.numel(), float(values.std(unbiased=False))
    if kind == "xavier":
        limit = math.sqrt(3 / n)
        assert limit * (1 - 20 / count) <= float(values.abs().max()) <= limit * (1 + 1e-6)
        assert abs(std - limit / math.sqrt(3)) <= Z * limit / math.sqrt(3) * math.sqrt(0.8 / (4 * count))
    else:
        sigma = math.sqrt(2 / n)
        assert abs(std - sigma) <= Z * sigma / math.sqrt(2 * count)


def test_positive_unitball_rows_sum_to_one():
    values = fill(Filler(type="positive_unitball"), (3, 4, 5), torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(values.reshape(3, -1).sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert float(values.min()) >= 0


@pytest.mark.parametrize(
    "text, shape, match",
    [
        ('type: "nonesuch"', (2,), "unknown filler type"),
        ('type: "uniform" sparse: 2', (4, 4), "gaussian filler only"),
        ('type: "gaussian" std: 0', (2,), "std must be > 0"),
        ('type: "gaussian" sparse: 5', (4, 4), "sparse 5"),
        ('type: "uniform" min: 1 max: 0', (2,), "min 1.0 must be <= max 0.0"),
        ('type: "xavier"', (2, 2, 2, 2, 2), "at most 4 axes"),
        ('type: "constant"', (2, 0), "empty blob"),
        ('type: "bilinear"', (1, 1, 3, 4), "square"),
    ],
)
def test_caffe_filler_checks(text, shape, match):
    with pytest.raises(NetBuildError, match=match):
        fill(parse_text(text, Filler()), shape)
