"""HDF5Data: Caffe's HDF5DataLayer order (rows in order, wrapping, file after file), shuffle, and bad sources."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
import torch

from pipeline.errors import DataError, NetBuildError
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string


def write(folder, name, rows, offset=0, extra=None, label=True):
    with h5py.File(folder / name, "w") as f:
        f["data"] = (np.arange(rows * 2, dtype=np.float64).reshape(rows, 1, 2) + offset * 100).astype(np.float64)
        if label:
            f["label"] = np.arange(rows, dtype=np.int64) + offset * 100
        for key, value in (extra or {}).items():
            f[key] = value
    return name


def build(source="list.txt", batch=4, shuffle=False, tops=("data", "label"), seed=0):
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    text = f"""layer {{ name: "h5" type: "HDF5Data" {top_lines}
      hdf5_data_param {{ source: "{source}" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}"""
    return Net(net_from_string(text), seed=seed)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def labels(net, batches):
    return [net.forward()["label"].tolist() for _ in range(batches)]


def test_rows_in_order_wrapping_to_row_zero(folder):
    (folder / "list.txt").write_text(write(folder, "a.h5", 6) + "\n")
    net = build(batch=4)
    assert net.blob_shapes == {"data": (4, 1, 2), "label": (4,)}
    out = net.forward()
    assert out["data"].dtype == torch.float32 and out["label"].dtype == torch.float32
    np.testing.assert_array_equal(out["data"].numpy().ravel(), np.arange(8))
    assert labels(net, 2) == [[4, 5, 0, 1], [2, 3, 4, 5]]


def test_files_in_list_order_then_again(folder):
    (folder / "list.txt").write_text(f"{write(folder, 'a.h5', 3)}\n  {write(folder, 'b.h5', 2, offset=1)}\n\n")
    assert labels(build(batch=4), 3) == [[0, 1, 2, 100], [101, 0, 1, 2], [100, 101, 0, 1]]


def test_extra_datasets_and_top_subset(folder):
    (folder / "list.txt").write_text(write(folder, "a.h5", 5, extra={"weight": np.ones((5, 3), np.float32)}))
    net = build(batch=2, tops=("weight",))
    assert net.blob_shapes == {"weight": (2, 3)}


@pytest.mark.parametrize("files, seed", list(itertools.product([1, 3], [0, 1])))
def test_shuffle_is_a_seeded_permutation(files, seed, folder):
    names = [write(folder, f"f{i}.h5", 5, offset=i) for i in range(files)]
    (folder / "list.txt").write_text("\n".join(names))
    everything = sorted(100 * i + r for i in range(files) for r in range(5))
    epoch = len(everything)
    first = sum(labels(build(batch=epoch, shuffle=True, seed=seed), 1), [])
    again = sum(labels(build(batch=epoch, shuffle=True, seed=seed), 1), [])
    assert sorted(first) == everything and first == again


def test_shuffle_reshuffles_each_epoch(folder):
    (folder / "list.txt").write_text(write(folder, "a.h5", 20))
    net = build(batch=20, shuffle=True)
    one, two = labels(net, 2)
    assert sorted(one) == sorted(two) == list(range(20)) and one != two


def test_missing_list_file_names_layer_and_path(folder):
    with pytest.raises(DataError, match=r"layer 'h5' \(HDF5Data\): cannot open source list file 'nope.txt'"):
        build(source="nope.txt")


def test_missing_h5_file_names_layer_and_path(folder):
    (folder / "list.txt").write_text("gone.h5\n")
    with pytest.raises(DataError, match=r"layer 'h5' \(HDF5Data\): HDF5 file 'gone.h5' .*not found"):
        build()


def test_missing_dataset(folder):
    (folder / "list.txt").write_text(write(folder, "a.h5", 3, label=False))
    with pytest.raises(DataError, match=r"'a.h5' has no dataset 'label' for top 'label' \(datasets: data\)"):
        build()


def test_missing_file_found_at_a_file_switch(folder):
    (folder / "list.txt").write_text(f"{write(folder, 'a.h5', 4)}\nb.h5")
    net = build(batch=4)
    net.forward()
    with pytest.raises(DataError, match="HDF5 file 'b.h5'"):
        net.forward()


@pytest.mark.parametrize(
    "content, message",
    [("", "names no HDF5 file"), ("bad", "cannot read HDF5 file 'bad.h5'"), ("rows", "same number of rows")],
)
def test_bad_sources(content, message, folder):
    if content == "bad":
        (folder / "bad.h5").write_bytes(b"not hdf5")
        content = "bad.h5"
    elif content == "rows":
        content = write(folder, "r.h5", 3, extra={"other": np.zeros(4)})
        (folder / "list.txt").write_text(content)
        with pytest.raises(DataError, match=message):
            build(tops=("data", "other"))
        return
    (folder / "list.txt").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        build()
    assert isinstance(info.value, NetBuildError) and info.value.layer == "h5"


def test_bad_batch_size(folder):
    (folder / "list.txt").write_text(write(folder, "a.h5", 3))
    with pytest.raises(NetBuildError, match="batch_size must be positive"):
        build(batch=0)
