"""DummyData: shapes (shape / legacy num-channels-height-width), fillers per top, refilling rules."""

import pytest
import torch

from pipeline.errors import NetBuildError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string


def dummy_net(param: str, tops=("a", "b"), seed: int = 1701) -> Net:
    top_text = " ".join(f'top: "{t}"' for t in tops)
    text = f'layer {{ name: "data" type: "DummyData" {top_text} dummy_data_param {{ {param} }} }}'
    return Net(net_from_string(text), seed=seed)


def run(net: Net) -> dict[str, torch.Tensor]:
    net()
    return {name: net.blobs[name].data.clone() for name in net.layer("data").top_names}


@pytest.mark.parametrize(
    "param, shapes",
    [
        ("shape { dim: 2 dim: 3 }", [(2, 3), (2, 3)]),
        ("shape { dim: 2 dim: 3 } shape { dim: 4 }", [(2, 3), (4,)]),
        ("num: 2 channels: 3 height: 4 width: 5", [(2, 3, 4, 5), (2, 3, 4, 5)]),
        ("num: 2 num: 6 channels: 1 height: 4 width: 5 width: 1", [(2, 1, 4, 5), (6, 1, 4, 1)]),
    ],
)
def test_shapes(param, shapes):
    net = dummy_net(param)
    assert [net.blob_shapes[t] for t in ("a", "b")] == shapes
    tops = run(net)
    assert [tuple(tops[t].shape) for t in ("a", "b")] == shapes
    assert all(not v.any() for v in tops.values())  # no filler: constant 0


def test_constant_tops_are_filled_once_and_random_tops_every_forward():
    net = dummy_net(
        'data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: 0.5 } '
        "shape { dim: 50 dim: 40 } shape { dim: 3 }"
    )
    first, second = run(net), run(net)
    assert not torch.equal(first["a"], second["a"])
    assert 1.8 < float(first["a"].std()) < 2.2
    assert torch.equal(first["b"], torch.full((3,), 0.5)) and torch.equal(second["b"], first["b"])


def test_one_filler_serves_every_top_with_fresh_draws():
    tops = run(dummy_net('data_filler { type: "uniform" min: 1 max: 2 } shape { dim: 100 }'))
    assert not torch.equal(tops["a"], tops["b"])
    assert all(float(v.min()) >= 1 and float(v.max()) <= 2 for v in tops.values())


def test_draws_come_from_the_net_seed_and_follow_the_dtype():
    param = 'data_filler { type: "gaussian" } shape { dim: 4 dim: 5 }'
    a, b, c = (run(dummy_net(param, ("a",), seed)) for seed in (1, 1, 2))
    assert torch.equal(a["a"], b["a"]) and not torch.equal(a["a"], c["a"])
    net = dummy_net(param + ' data_filler { type: "constant" value: 3 }', ("a", "b")).double()
    assert all(v.dtype == torch.float64 for v in run(net).values())


def test_a_constant_top_cannot_be_changed_from_outside():
    net = dummy_net('data_filler { type: "constant" value: 2 } shape { dim: 3 }', ("a",))
    net()
    net.blobs["a"].data.mul_(0)
    assert torch.equal(run(net)["a"], torch.full((3,), 2.0))


@pytest.mark.parametrize(
    "param, match",
    [
        ("data_filler { } data_filler { } data_filler { } shape { dim: 2 }", "data_filler"),
        ("shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }", "'shape' once, or once per top"),
        ("num: 2 channels: 1 height: 1", "'width' once"),
        ("num: 2 channels: 1 height: 1 width: 1 shape { dim: 2 }", "not both"),
        ('data_filler { type: "nonesuch" } shape { dim: 2 }', "top 'a'.*unknown filler type"),
        ('data_filler { type: "uniform" } shape { dim: 2 dim: 0 }', "empty"),
        ('data_filler { type: "bilinear" } shape { dim: 2 dim: 3 }', "4-D"),
    ],
)
def test_bad_parameters_are_build_errors(param, match):
    with pytest.raises(NetBuildError, match=match):
        dummy_net(param)
