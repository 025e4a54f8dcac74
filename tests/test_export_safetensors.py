"""Export to safetensors and torch state dicts: bit-identical round trips, keys the exported module's state_dict
shares, files written by the safetensors library, nets rebuilt from the file alone, readers picked by content
(not by name), and bad, ill-fitting or mutated files giving our errors."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from export_util import realistic_statistics, zoo_deploy
from model_zoo_util import ZOO

from pipeline.errors import WeightsError
from pipeline.export import (
    ConvertRequest,
    DeployModule,
    convert,
    load_safetensors,
    net_from_safetensors,
    read_safetensors_metadata,
    save_safetensors,
    state_dict,
)
from pipeline.export.safetensors_io import save_torch
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string
from pipeline.weights.io import copy_weights, save_caffemodel, save_caffemodel_h5

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
    # The official reader sees keys "<layer>.<blob name>" (layer names with '/' kept whole).
    loaded = load_file(path)
    assert list(loaded) == list(state_dict(net))
    assert list(loaded) == [
        "block/conv.weight",
        "block/conv.bias",
        "block/conv2.weight",
        "block/conv2.bias",
        "bn.mean_sum",
        "bn.variance_sum",
        "bn.scale_factor",
        "prelu.weight",
        "ip.weight",
        "ip.bias",
    ]
    assert loaded["prelu.weight"].shape == ()
    for key, value in state_dict(net).items():
        assert torch.equal(loaded[key], value), key
    with safe_open(path, "pt") as f:
        assert f.metadata()["note"] == "x" and f.metadata()["keys"] == "<layer>.<blob name>"
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
            to="safetensors",
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
        "neither '<layer>.<blob name>' nor '<layer>/<blob index>'",
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
    tensors["ip.weight"] = torch.zeros(4, 7)
    tensors["unknown_layer.weight"] = torch.zeros(2)
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    with pytest.raises(WeightsError, match=r"layer 'ip' blob 0: shape mismatch: file has \[4, 7\], net expects"):
        load_safetensors(edge_net(), path)
    del tensors["ip.weight"], tensors["ip.bias"]
    tensors["bn.extra"] = torch.zeros(1)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    with pytest.raises(
        WeightsError,
        match=r"layer 'bn': incompatible blobs: file has extra, mean_sum, scale_factor, variance_sum, "
        r"net's BatchNorm layer has mean_sum, variance_sum, scale_factor",
    ):
        load_safetensors(edge_net(), path)
    del tensors["bn.extra"]
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    report = load_safetensors(edge_net(), path)
    assert report.ignored == ["unknown_layer"] and report.missing == ["ip"]
    # Caffe's blob indices, "<layer>/<i>" (earlier files, weights.npz), still load; the two forms never mix.
    by_index = {
        f"{layer.name}/{i}": b.detach().contiguous().clone() for layer in net.layers for i, b in enumerate(layer.blobs)
    }
    save_file(by_index, path)
    fresh = edge_net(seed=11)
    assert load_safetensors(fresh, path).missing == []
    assert all(torch.equal(a, b) for x, y in zip(fresh.layers, net.layers) for a, b in zip(x.blobs, y.blobs))
    save_file({**by_index, "ip.weight": by_index["ip/0"].clone()}, path)
    with pytest.raises(WeightsError, match=r"layer 'ip': keys mix"):
        load_safetensors(edge_net(), path)


# ----- torch state dicts, and readers picked by content ------------------------------------------------------------
def test_torch_state_dict_loads_into_the_exported_module(tmp_path):
    net = edge_net()
    path = tmp_path / "edge.pt"
    save_torch(net, path)
    state = torch.load(path, weights_only=True)
    assert list(state) == list(state_dict(net)) == list(DeployModule(net).state_dict())
    module = DeployModule(edge_net(seed=8))
    assert str(module.load_state_dict(state)) == "<All keys matched successfully>"
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(module(x), net(x)["y"])
    # The module's state_dict keys come back whole for layer names holding '/' and '.'; missing keys are named so.
    del state["ip.bias"]
    result = DeployModule(edge_net(seed=8)).load_state_dict(state, strict=False)
    assert result.missing_keys == ["ip.bias"] and result.unexpected_keys == []
    # Our readers take the file too (shared blobs stay shared).
    fresh = edge_net(seed=9)
    assert copy_weights(fresh, path).missing == []
    assert all(torch.equal(a, b) for x, y in zip(fresh.layers, net.layers) for a, b in zip(x.blobs, y.blobs))
    assert fresh.layer("block/conv").weight is fresh.layer("block/conv2").weight


def test_dotted_layer_names_round_trip_through_the_module(tmp_path):
    text = EDGE_NET.replace('name: "ip"', 'name: "head.fc.1"')
    net = Net(net_from_string(text), phase="TEST", seed=1)
    module = DeployModule(net)
    keys = list(module.state_dict())
    assert keys[-2:] == ["head.fc.1.weight", "head.fc.1.bias"] and keys == list(state_dict(net))
    other = DeployModule(Net(net_from_string(text), phase="TEST", seed=2))
    other.load_state_dict(module.state_dict())
    assert torch.equal(other.layers[-1].weight, net.layer("head.fc.1").weight)


def _all_formats(net, folder) -> dict[str, object]:
    """The same weights in every format we read, each under a name that says another format."""
    from safetensors.torch import save_file

    files = {}
    save_safetensors(net, folder / "a.pt")
    files["safetensors"] = folder / "a.pt"
    save_torch(net, folder / "b.safetensors")
    files["torch"] = folder / "b.safetensors"
    save_caffemodel(net, folder / "c.caffemodel.h5")
    files["caffemodel"] = folder / "c.caffemodel.h5"
    save_caffemodel_h5(net, folder / "d.caffemodel")
    files["hdf5"] = folder / "d.caffemodel"
    np.savez(
        folder / "e.npz",
        **{f"{layer.name}/{i}": b.detach().numpy() for layer in net.layers for i, b in enumerate(layer.blobs)},
    )
    (folder / "e.npz").rename(folder / "e.safetensors")
    files["npz"] = folder / "e.safetensors"
    save_file({k: v.clone() for k, v in state_dict(net).items()}, folder / "f.bin")
    files["safetensors (library)"] = folder / "f.bin"
    return files


def test_readers_are_picked_by_content_not_name(tmp_path):
    from pipeline.weights.format import sniff, weights_format

    text = EDGE_NET.replace("block/", "block_")  # (Caffe's HDF5 layout cannot hold '/' in layer names)
    net = Net(net_from_string(text), phase="TEST", seed=3)
    files = _all_formats(net, tmp_path)
    for kind, path in files.items():
        fresh = Net(net_from_string(text), phase="TEST", seed=21)
        report = copy_weights(fresh, path)
        assert report.missing == [] and report.copied, kind
        for a, b in zip(fresh.layers, net.layers):
            assert all(torch.equal(x, y) for x, y in zip(a.blobs, b.blobs)), (kind, a.name)
    assert [sniff(p) for p in files.values()] == ["safetensors", "torch", None, "hdf5", "npz", "safetensors"]
    assert weights_format(files["caffemodel"]) == "caffemodel"  # protobuf has no magic: the default
    # A torch.export program is recognised and refused in words.
    with zipfile.ZipFile(tmp_path / "prog.caffemodel", "w") as archive:
        archive.writestr("prog/archive_format", "pt2")
    with pytest.raises(WeightsError, match=r"prog.caffemodel: a torch.export program"):
        copy_weights(edge_net(), tmp_path / "prog.caffemodel")
    # Content no signature fits is read as a caffemodel; the error says what the name claimed.
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 40)
    with pytest.raises(WeightsError, match=r"junk.safetensors: not a valid caffemodel.*named like a safetensors file"):
        copy_weights(edge_net(), tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"junk.pt: empty file.*named like a torch file"):
        copy_weights(edge_net(), tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match=r"missing.pt: cannot read"):
        copy_weights(edge_net(), tmp_path / "missing.pt")


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).write_text('pwned')",))


def test_bad_torch_files_give_our_error_and_run_no_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned.txt"
    monkeypatch.setenv("PWNED", str(marker))
    cases = {
        "evil.pt": ({"ip.weight": _Payload()}, "not a readable torch file"),
        "checkpoint.pt": (
            {"state_dict": state_dict(edge_net()), "epoch": 3},
            r"entry 'state_dict' is a dict.*checkpoint",
        ),
        "ints.pt": ({"ip.weight": torch.zeros(4, 75, dtype=torch.int64)}, "is torch.int64, not a float type"),
        "list.pt": ([torch.zeros(2)], "holds a list, not a state dict"),
        "badkey.pt": ({"ip": torch.zeros(2)}, "key 'ip' is neither"),
    }
    for name, (obj, message) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(WeightsError, match=f"{name}: .*{message}"):
            copy_weights(edge_net(), tmp_path / name)
    assert not marker.exists()
    good = tmp_path / "good.pt"
    save_torch(edge_net(), good)
    data = good.read_bytes()
    for cut in (len(data) // 2, 100, 5):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="cut.pt"):
            copy_weights(edge_net(), tmp_path / "cut.pt")


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
