"""Weights in and out: .caffemodel (binary NetParameter), .caffemodel.h5 (Caffe's HDF5 layout), .npz.

Copying follows Caffe's Net::CopyTrainedLayersFrom: by layer name; a file layer the net lacks is reported
and skipped; a blob count or shape mismatch is an error naming the layer.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError

from pipeline.blobs import array_to_blob, blob_shape, blob_to_array, shapes_match
from pipeline.errors import WeightsError
from pipeline.proto import caffe_pb2

log = logging.getLogger("pipeline")


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # in the file, not in the net
    missing: list[str] = field(default_factory=list)  # in the net with blobs, not in the file


def read_caffemodel(path: str | Path) -> caffe_pb2.NetParameter:
    """Parse a binary .caffemodel (V0/V1 files are upgraded to V2 layers)."""
    from pipeline.upgrade import upgrade_net

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror}") from None
    if not data:
        raise WeightsError(f"{path}: empty file, not a caffemodel")
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{path}: not a valid caffemodel (binary NetParameter): {exc}") from None
    del data
    if not (net.layer or net.layers):
        raise WeightsError(f"{path}: no layers found: not a caffemodel (truncated, or another file type?)")
    return upgrade_net(net, str(path))


def layer_arrays_from_caffemodel(path: str | Path) -> dict[str, list]:
    net = read_caffemodel(path)
    return {layer.name: list(layer.blobs) for layer in net.layer if layer.blobs}


def read_hdf5_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise WeightsError(f"{path}: HDF5 file has no 'data' group: not a Caffe .caffemodel.h5")
            result = {}
            for layer, group in f["data"].items():
                keys = sorted(group.keys(), key=int)
                result[layer] = [np.asarray(group[k], dtype=np.float32) for k in keys]
            return result
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read HDF5 weights: {exc}") from None


def read_npz_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as npz:
        grouped: dict[str, dict[int, np.ndarray]] = {}
        for key in npz.files:
            layer, _, index = key.rpartition("/")
            grouped.setdefault(layer, {})[int(index)] = npz[key]
    return {layer: [blobs[i] for i in sorted(blobs)] for layer, blobs in grouped.items()}


def copy_weights(net, path: str | Path, rename: dict[str, str] | None = None) -> CopyReport:
    """Fill `net`'s layer blobs from a weights file by layer name (`rename` maps file names to net names)."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".caffemodel.h5") else path.suffix
    if suffix in (".h5", ".caffemodel.h5"):
        source = read_hdf5_weights(path)
    elif suffix == ".npz":
        source = read_npz_weights(path)
    else:
        source = layer_arrays_from_caffemodel(path)
    return copy_layer_blobs(net, source, str(path), rename)


def copy_layer_blobs(net, source: dict[str, list], origin: str, rename: dict[str, str] | None = None) -> CopyReport:
    report = CopyReport()
    rename = rename or {}
    for file_name, blobs in source.items():
        name = rename.get(file_name, file_name)
        layer = net.layer_by_name.get(name)
        if layer is None:
            report.ignored.append(file_name)
            log.info("Ignoring source layer %s", file_name)
            continue
        targets = layer.blobs
        if len(targets) != len(blobs):
            raise WeightsError(f"{origin}: layer '{name}': incompatible number of blobs: file has {len(blobs)}, "
                               f"net expects {len(targets)}")
        for i, (target, blob) in enumerate(zip(targets, blobs)):
            if isinstance(blob, caffe_pb2.BlobProto):
                if not shapes_match(blob, tuple(target.shape)):
                    raise WeightsError(f"{origin}: layer '{name}' blob {i}: shape mismatch: file has "
                                       f"{list(blob_shape(blob))}, net expects {list(target.shape)}")
                array = blob_to_array(blob)
            else:
                array = np.asarray(blob, dtype=np.float32)
                if array.size != target.numel() or (array.shape != tuple(target.shape) and array.ndim > 1):
                    raise WeightsError(f"{origin}: layer '{name}' blob {i}: shape mismatch: file has "
                                       f"{list(array.shape)}, net expects {list(target.shape)}")
            with torch.no_grad():
                target.copy_(torch.from_numpy(array.reshape(tuple(target.shape))))
        report.copied.append(name)
    for layer in net.layers:
        if layer.blobs and layer.name not in report.copied:
            report.missing.append(layer.name)
    return report


def net_to_proto(net) -> caffe_pb2.NetParameter:
    """The net's layers with their blobs, as Caffe's Net::ToProto writes a .caffemodel."""
    proto = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layers:
        if layer.type_name == "Split":
            continue
        out = proto.layer.add()
        out.CopyFrom(layer.param)
        del out.blobs[:]
        for blob in layer.blobs:
            array_to_blob(blob.detach().cpu().numpy(), out.blobs.add())
    return proto


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_caffemodel(net, path: str | Path) -> None:
    atomic_write(path, net_to_proto(net).SerializeToString())
