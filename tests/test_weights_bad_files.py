"""Bad weights files give our WeightsError naming the file: truncated, random, empty, ill-fitting, pickled and
mutated (fuzzed) caffemodels, bad HDF5 and mean files."""

import pickle

import h5py
import numpy as np
import pytest
from fuzz_util import FUZZ, FUZZ_SLOW, mutated, time_limit
from hypothesis import given
from weights_util import TINY, tiny_net

from pipeline.errors import WeightsError
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import net_from_string
from pipeline.weights.caffemodel import scan_caffemodel
from pipeline.weights.io import (
    copy_weights,
    layer_arrays_from_caffemodel,
    read_caffemodel,
    read_mean,
    save_caffemodel,
    save_caffemodel_h5,
)


# ----- bad input -------------------------------------------------------------------------------------------
def _largest_blob_middle(path) -> int:
    blobs = [blob for _, layer_blobs in scan_caffemodel(path) for blob in layer_blobs]
    offset, nbytes = max((chunk for blob in blobs for chunk in blob.chunks), key=lambda c: c[1])
    return offset + nbytes // 2


def test_truncated_caffemodel(tiny_file, tmp_path):
    net, path = tiny_file
    data = path.read_bytes()
    for cut in (_largest_blob_middle(path), len(data) - 1, 3):
        bad = tmp_path / f"cut_{cut}.caffemodel"
        bad.write_bytes(data[:cut])
        for reader in (read_caffemodel, lambda p: copy_weights(tiny_net(), p), layer_arrays_from_caffemodel):
            with pytest.raises(WeightsError, match=f"cut_{cut}.caffemodel"):
                reader(bad)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_caffemodel(tmp_path, seed):
    bad = tmp_path / "random.caffemodel"
    bad.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for reader in (read_caffemodel, lambda p: copy_weights(tiny_net(), p)):
        with pytest.raises(WeightsError, match="random.caffemodel"):
            reader(bad)


@pytest.mark.parametrize("suffix", [".caffemodel", ".caffemodel.h5", ".npz", ".binaryproto"])
def test_empty_and_missing_files(tmp_path, suffix):
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    reader = read_mean if suffix == ".binaryproto" else (lambda p: copy_weights(tiny_net(), p))
    with pytest.raises(WeightsError, match=f"empty{suffix}"):
        reader(empty)
    with pytest.raises(WeightsError, match="nothing_here"):
        reader(tmp_path / f"nothing_here{suffix}")
    with pytest.raises(WeightsError, match=str(tmp_path)):
        reader(tmp_path)


def test_text_prototxt_given_as_weights(tmp_path):
    text = tmp_path / "deploy.caffemodel"
    text.write_text(TINY)
    with pytest.raises(WeightsError, match="deploy.caffemodel"):
        copy_weights(tiny_net(), text)
    with pytest.raises(WeightsError, match="prototxt"):
        read_caffemodel(text)


def test_blob_count_disagrees_with_prototxt(tiny_file):
    _, path = tiny_file
    no_bias = Net(
        net_from_string(TINY.replace("num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 3 bias_term: false")),
        phase="TEST",
    )
    with pytest.raises(WeightsError, match=r"tiny.caffemodel: layer 'conv': incompatible number of blobs"):
        copy_weights(no_bias, path)


def test_blob_shape_disagrees_with_prototxt(tiny_file):
    _, path = tiny_file
    wider = Net(net_from_string(TINY.replace("num_output: 4", "num_output: 6")), phase="TEST")
    with pytest.raises(WeightsError, match=r"tiny.caffemodel: layer 'conv' blob 0: shape mismatch.*\[4, 3, 3, 3\]"):
        copy_weights(wider, path)


def test_blob_data_shorter_than_its_shape(tmp_path):
    proto = caffe_pb2.NetParameter(name="x")
    layer = proto.layer.add(name="ip_a", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([5, 64])
    blob.data.extend([1.0] * 10)
    layer.blobs.add().shape.dim.append(5)
    path = tmp_path / "short.caffemodel"
    path.write_bytes(proto.SerializeToString())
    net = Net(net_from_string(TINY.replace('param { name: "shared_w" }', "")), phase="TEST")
    with pytest.raises(WeightsError, match=r"short.caffemodel: layer 'ip_a' blob 0: blob holds 10 values"):
        copy_weights(net, path)


def test_mixed_v1_v2_caffemodel(tmp_path):
    proto = caffe_pb2.NetParameter()
    proto.layer.add(name="new")
    proto.layers.add(name="old")
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(proto.SerializeToString())
    for reader in (read_caffemodel, scan_caffemodel):
        with pytest.raises(WeightsError, match="mixed.caffemodel.*both"):
            reader(path)


def _edit_h5(path, edit):
    with h5py.File(path, "a") as f:
        edit(f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.__delitem__("data/conv/1"), r"layer 'conv' blob 1: dataset 'data/conv/1' is missing"),
        (lambda f: f.__delitem__("data/ip_a/0"), r"layer 'ip_a' blob 0: dataset 'data/ip_a/0' is missing"),
        (lambda f: f.__delitem__("data"), r"no 'data' group"),
        (lambda f: f.create_dataset("data/conv/2", data=np.zeros(3)), r"layer 'conv': incompatible number of blobs"),
        (
            lambda f: (f.__delitem__("data/conv/0"), f.create_dataset("data/conv/0", data=np.zeros((4, 3, 9)))),
            r"layer 'conv' blob 0: shape mismatch",
        ),
        (
            lambda f: (f.__delitem__("data/scale/0"), f.create_dataset("data/scale/0", data=np.array([b"ab"] * 4))),
            r"layer 'scale' blob 0: not a numeric dataset",
        ),
    ],
)
def test_bad_hdf5(tmp_path, edit, message):
    path = tmp_path / "bad.caffemodel.h5"
    save_caffemodel_h5(tiny_net(), path)
    _edit_h5(path, edit)
    with pytest.raises(WeightsError, match="bad.caffemodel.h5: .*" + message):
        copy_weights(tiny_net(), path)


def test_truncated_hdf5(tmp_path):
    path = tmp_path / "cut.caffemodel.h5"
    save_caffemodel_h5(tiny_net(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="cut.caffemodel.h5"):
        copy_weights(tiny_net(), path)


def test_hdf5_cannot_store_slash_names(tmp_path):
    net = Net(net_from_string(TINY.replace('name: "conv"', 'name: "conv/1x1"')), phase="TEST")
    with pytest.raises(WeightsError, match="conv/1x1"):
        save_caffemodel_h5(net, tmp_path / "x.caffemodel.h5")
    assert not list(tmp_path.iterdir())


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).write_text('pwned')",))


def test_no_reader_unpickles(tmp_path, monkeypatch):
    marker = tmp_path / "pwned.txt"
    monkeypatch.setenv("PWNED", str(marker))
    evil = np.array([_Payload()], dtype=object)
    np.savez(tmp_path / "evil.npz", **{"conv/0": evil})
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    (tmp_path / "evil.caffemodel").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(WeightsError, match="evil.npz"):
        copy_weights(tiny_net(), tmp_path / "evil.npz")
    with pytest.raises(WeightsError, match="evil.npy"):
        read_mean(tmp_path / "evil.npy")
    with pytest.raises(WeightsError, match="evil.caffemodel"):
        copy_weights(tiny_net(), tmp_path / "evil.caffemodel")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"\x00" * 10, b"garbage that is not protobuf \xff\xff", None])
def test_bad_mean_files(tmp_path, content, tiny_file):
    path = tmp_path / "mean.binaryproto"
    if content is None:
        path.write_bytes(tiny_file[1].read_bytes())  # a caffemodel is a valid message but holds no mean
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match="mean.binaryproto"):
        read_mean(path)


# ----- fuzzing ---------------------------------------------------------------------------------------------
def _v1_and_v0_models(v2: caffe_pb2.NetParameter) -> list[bytes]:
    """The tiny model's conv and InnerProduct layers as a V1 file (legacy 4-D blobs) and as a V0 file."""
    kinds = {
        "Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
        "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT,
    }
    v1, v0 = caffe_pb2.NetParameter(name="v1", input=["data"]), caffe_pb2.NetParameter(name="v0", input=["data"])
    for layer in v2.layer:
        if layer.type not in kinds:
            continue
        old = v1.layers.add(
            name=layer.name,
            type=kinds[layer.type],
            bottom=layer.bottom,
            top=layer.top,
            blobs_lr=[1, 2],
            weight_decay=[1, 0],
        )
        nested = v0.layers.add(bottom=layer.bottom, top=layer.top).layer
        nested.name, nested.type = layer.name, "conv" if layer.type == "Convolution" else "innerproduct"
        for blob in layer.blobs:
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            for target in (old.blobs.add(), nested.blobs.add()):
                target.num, target.channels, target.height, target.width = dims
                target.data.extend(blob.data)
    return [v1.SerializeToString(), v0.SerializeToString()]


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    net = tiny_net()
    save_caffemodel(net, folder / "tiny.caffemodel")
    v2_bytes = (folder / "tiny.caffemodel").read_bytes()
    v2 = caffe_pb2.NetParameter()
    v2.ParseFromString(v2_bytes)
    bases = [v2_bytes, *_v1_and_v0_models(v2)]
    for base in bases:  # the unmutated files load
        (folder / "base.caffemodel").write_bytes(base)
        copy_weights(net, folder / "base.caffemodel")
    pieces = [*bases, b"\x00", b"\xff" * 9, b"\xa2\x06\x7f", b"\x3a\x05\x2a\x03\x00\x00\x80", b"\x12\x00"]
    (folder / "mutant.caffemodel").write_bytes(b"")
    return net, folder / "mutant.caffemodel", bases, pieces


def _feed_caffemodel(data: bytes, net, path) -> None:
    with open(path, "r+b") as f:  # (rewriting in place: truncating to zero first makes ext4 flush, slowly)
        f.write(data)
        f.truncate()
    readers = (read_caffemodel, layer_arrays_from_caffemodel, lambda p: copy_weights(net, p))
    with time_limit(10):
        for reader in readers:
            try:
                reader(path)
            except WeightsError as exc:
                assert str(path) in str(exc)


def test_fuzz_caffemodel_readers(fuzz_setup):
    net, path, bases, pieces = fuzz_setup

    @FUZZ
    @given(mutated(bases, pieces))
    def run(data):
        _feed_caffemodel(data, net, path)

    run()


@pytest.mark.slow
def test_fuzz_caffemodel_readers_long(fuzz_setup):
    net, path, bases, pieces = fuzz_setup

    @FUZZ_SLOW
    @given(mutated(bases, pieces, max_ops=12))
    def run(data):
        _feed_caffemodel(data, net, path)

    run()
