"""`--weights-map` (pipeline/weights/name_map.py): caffemodels into layers of other names, several teachers with the
same layer names into one net, and a map that does nothing is an error."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.errors import WeightsError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string
from pipeline.weights.io import save_caffemodel
from pipeline.weights.name_map import Rule, load_weights, parse_weights_map

IP = 'layer {{ name: "{name}" type: "InnerProduct" bottom: "x" top: "{name}" inner_product_param {{ num_output: 3 }} }}'
INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }'


def net_of(*names: str) -> Net:
    return Net(net_from_string(INPUT + "".join(IP.format(name=n) for n in names)), "TEST", seed=1)


@pytest.fixture
def teachers(tmp_path):
    """Two caffemodels, each with layers `ip` and `other`, filled with 1s and 2s."""
    paths = []
    for value in (1.0, 2.0):
        net = net_of("ip", "other")
        with torch.no_grad():
            for blobs in net.params.values():
                for blob in blobs:
                    blob.fill_(value)
        path = tmp_path / f"teacher{int(value)}.caffemodel"
        save_caffemodel(net, path)
        paths.append(str(path))
    return paths


def solver_of(net):
    return SimpleNamespace(net=net, test_nets=[])


@pytest.mark.parametrize(
    "rule, name, expected",
    [
        (Rule("conv1", "t_conv1"), "conv1", "t_conv1"),
        (Rule("conv1", "t_conv1"), "conv10", None),
        (Rule("*", "t_*"), "ip2", "t_ip2"),
        (Rule("conv*", "s_conv*"), "conv3", "s_conv3"),
        (Rule("conv*", "s_conv*"), "ip1", None),
        (Rule("*_a", "*_b"), "x_a", "x_b"),
    ],
)
def test_rule_renames(rule, name, expected):
    assert rule.rename(name) == expected


def test_parse_rules_files_and_map_files(tmp_path):
    map_file = tmp_path / "map.txt"
    map_file.write_text("# teacher 2\nb.caffemodel:ip t2_ip\nother=t2_other  # trailing comment\n")
    weights_map = parse_weights_map(["a.caffemodel:*=t1_*,conv1=x", str(map_file)])
    assert [(r.file, r.old, r.new) for r in weights_map.rules] == [
        ("a.caffemodel", "*", "t1_*"),
        (None, "conv1", "x"),
        ("b.caffemodel", "ip", "t2_ip"),
        (None, "other", "t2_other"),
    ]
    # Exact rules first, a file's own rules before general ones; rules of other files do not apply.
    renaming = weights_map.for_file("/some/where/a.caffemodel")
    assert renaming["conv1"] == "x" and renaming["ip"] == "t1_ip" and renaming["other"] == "t2_other"
    assert weights_map.for_file("b.caffemodel")["ip"] == "t2_ip"
    assert weights_map.for_file("b.caffemodel").get("conv2", "conv2") == "conv2"


@pytest.mark.parametrize("bad", ["=x", "a=", "a*b*=c", "a=b*", "x.caffemodel:=y"])
def test_bad_rules_are_errors(bad):
    with pytest.raises(WeightsError, match="rule"):
        parse_weights_map(bad)


def test_map_file_errors(tmp_path):
    with pytest.raises(WeightsError, match="cannot read"):
        parse_weights_map(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("a b c\n")
    with pytest.raises(WeightsError, match=r"bad.txt:1"):
        parse_weights_map(str(bad))


def test_two_teachers_with_the_same_layer_names_into_one_net(teachers):
    net = net_of("t1_ip", "t2_ip", "t1_other")
    spec = f"{teachers[0]}:*=t1_*,teacher2.caffemodel:ip=t2_ip"
    filled = load_weights(solver_of(net), teachers, parse_weights_map(spec))
    assert filled == {teachers[0]: ["t1_ip", "t1_other"], teachers[1]: ["t2_ip"]}
    assert torch.all(net.params["t1_ip"][0] == 1) and torch.all(net.params["t2_ip"][0] == 2)
    assert torch.all(net.params["t1_other"][1] == 1)


def test_a_file_that_fills_no_layer_is_an_error(teachers):
    with pytest.raises(WeightsError, match=r"fills no layer.*\*=t_\*"):
        load_weights(solver_of(net_of("t_ip")), [teachers[0]])


def test_rules_that_match_nothing_are_errors(teachers):
    with pytest.raises(WeightsError, match="matched no layer.*conv9=t_conv9"):
        load_weights(solver_of(net_of("t_ip")), [teachers[0]], parse_weights_map("ip=t_ip,conv9=t_conv9"))
    with pytest.raises(WeightsError, match="name no layer.*other=t_typo"):
        load_weights(solver_of(net_of("t_ip")), [teachers[0]], parse_weights_map("ip=t_ip,other=t_typo"))


def test_values_arrive_unchanged(teachers):
    net = net_of("t_ip")
    load_weights(solver_of(net), teachers[1], parse_weights_map("ip=t_ip"))
    np.testing.assert_array_equal(net.params["t_ip"][0].detach().numpy(), np.full((3, 4), 2, np.float32))
