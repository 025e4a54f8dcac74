"""Export to safetensors: bit-identical round trips, files written by the safetensors library, nets rebuilt from
the file alone, and bad, ill-fitting or mutated files giving our errors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from export_util import realistic_statistics, zoo_deploy
from model_zoo_util import ZOO

from pipeline.errors import WeightsError
from pipeline.export import (
    ConvertRequest,
    convert,
    load_safetensors,
    net_from_safetensors,
    read_safetensors_metadata,
    save_safetensors,
    state_dict,
)
from pipeline.net import Net
from pipeline.prototxt import net_from_string
from pipeline.weights import save_caffemodel

# ----- safetensors -----------------------------------------------------------------------------------------------
EDGE_NET = """
name: "edge"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "block/conv" type: "Convolution" bottom: "x" top: "c" param { name: "shared_w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "block/conv2" type: "Convolution" bottom: "c" top: "c2" param { name: "shared_w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "c2" top: "c2" }
layer { name: "prelu" type: "PReLU" bottom: "c2" top: "c2" prelu_param { channel_shared: true } }
layer { name: "ip" type: "InnerProduct" bottom: "c2" top: "y" inner_product_param { num_output: 4
        weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.5 } } }
"""


def edge_net(seed=3) -> Net:
    net = Net(net_from_string(EDGE_NET), phase="TEST", seed=seed)
    realistic_statistics(net, seed)
    return net


def test_safetensors_round_trip_is_bit_identical(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    net = edge_net()
    path = tmp_path / "edge.safetensors"
    save_safetensors(net, path, {"note": "x"})
    # The official reader sees Caffe's keys "<layer>/<blob index>" (layer names with '/' kept whole).
    loaded = load_file(path)
    assert sorted(loaded) == sorted(state_dict(net))
    assert "block/conv/0" in loaded and loaded["prelu/0"].shape == ()
    for key, value in state_dict(net).items():
        assert torch.equal(loaded[key], value), key
    with safe_open(path, "pt") as f:
        assert f.metadata()["note"] == "x" and f.metadata()["keys"] == "<layer>/<blob index>"
    fresh = Net(net_from_string(EDGE_NET), phase="TEST", seed=99)
    report = load_safetensors(fresh, path)
    assert report.missing == [] and report.ignored == []
    for a, b in zip(fresh.layers, net.layers):
        assert all(torch.equal(x, y) for x, y in zip(a.blobs, b.blobs)), a.name
    # Shared blobs stay shared after loading.
    assert fresh.layer("block/conv").weight is fresh.layer("block/conv2").weight


def test_safetensors_written_by_the_library_loads(tmp_path):
    from safetensors.torch import save_file

    net = edge_net()
    save_file({k: v.clone() for k, v in state_dict(net).items()}, tmp_path / "lib.safetensors")
    fresh = edge_net(seed=5)
    load_safetensors(fresh, tmp_path / "lib.safetensors")
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)["y"], net(x)["y"], rtol=0, atol=0)


def test_net_rebuilds_from_the_file_alone(tmp_path):
    out = tmp_path / "lenet.safetensors"
    net = zoo_deploy("lenet", deploy_batch=2)
    save_caffemodel(net, tmp_path / "lenet.caffemodel")
    result = convert(
        ConvertRequest(
            model=ZOO / "lenet.prototxt",
            weights=[tmp_path / "lenet.caffemodel"],
            to="pt",
            out=out,
            variables={"deploy": True, "deploy_batch": 2},
        )
    )
    assert result.out == out and "prototxt" in read_safetensors_metadata(out)
    rebuilt = net_from_safetensors(out)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["prob"], net(x)["prob"])


def _tensor_file(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


BAD_FILES = {
    "empty": (b"", "empty file"),
    "short": (b"\x01\x02", "too short"),
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "header length"),
    "not json": (struct.pack("<Q", 4) + b"\xff\xfe{]", "not valid JSON"),
    "bad dtype": (_tensor_file({"ip/0": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype"),
    "truncated data": (
        _tensor_file({"ip/0": {"dtype": "F32", "shape": [4, 75], "data_offsets": [0, 1200]}}, b"\0" * 100),
        "outside",
    ),
    "bad key": (
        _tensor_file({"ip": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "not '<layer>/<blob index>'",
    ),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_safetensors_files_give_our_error_naming_the_file(tmp_path, name):
    data, message = BAD_FILES[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=message) as info:
        load_safetensors(edge_net(), path)
    assert str(path) in str(info.value)


def test_safetensors_that_do_not_fit_the_net_name_the_layer(tmp_path):
    net = edge_net()
    path = tmp_path / "w.safetensors"
    tensors = state_dict(net)
    tensors["ip/0"] = torch.zeros(4, 7)
    tensors["unknown_layer/0"] = torch.zeros(2)
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    with pytest.raises(WeightsError, match=r"layer 'ip' blob 0: shape mismatch: file has \[4, 7\], net expects"):
        load_safetensors(edge_net(), path)
    del tensors["ip/0"], tensors["ip/1"]
    tensors["bn/3"] = torch.zeros(1)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    with pytest.raises(WeightsError, match=r"layer 'bn': incompatible number of blobs: file has 4, net expects 3"):
        load_safetensors(edge_net(), path)
    del tensors["bn/3"]
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    report = load_safetensors(edge_net(), path)
    assert report.ignored == ["unknown_layer"] and report.missing == ["ip"]


def test_mutated_safetensors_files_give_only_our_errors(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    net = edge_net()
    good = tmp_path / "good.safetensors"
    save_safetensors(net, good)
    original = good.read_bytes()
    bad = tmp_path / "mutated.safetensors"

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=8),
        st.integers(0, len(original)),
    )
    def run(edits, cut):
        data = bytearray(original[:cut] if cut < len(original) // 2 else original)
        for position, value in edits:
            if position < len(data):
                data[position] = value
        bad.write_bytes(bytes(data))
        try:
            load_safetensors(net, bad)
        except WeightsError:
            pass

    run()
