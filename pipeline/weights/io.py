"""Weights in and out: .caffemodel (binary NetParameter), .caffemodel.h5 (Caffe's HDF5 layout), safetensors,
torch state dicts (torch.save), .npz, and .binaryproto means.

Which reader a weights file gets is decided by its content (pipeline/weights/format.py), not its name.
Copying follows Caffe's Net::CopyTrainedLayersFrom: by layer name; a file layer the net lacks is reported
and skipped; a blob count or shape mismatch is an error naming the file, layer and blob. Binary caffemodels
are streamed (pipeline/weights/caffemodel.py): the floats go from the file into the net's tensors one blob at a
time. Writing follows Net::ToProto / Net::ToHDF5. Every failure is a WeightsError naming the file; no reader
unpickles anything (torch files go through torch.load's weights_only loader, which rebuilds only tensors and
plain containers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError

from pipeline.errors import WeightsError
from pipeline.fileio import atomic_write, atomic_writer
from pipeline.proto import caffe_pb2
from pipeline.weights.blobs import BlobRef, array_to_blob, blob_shape, blob_to_array, has_legacy_shape, shape_equals
from pipeline.weights.caffemodel import (
    layer_blob_shape,
    parse_caffemodel,
    read_caffemodel,
    scan_caffemodel,
    scan_caffemodel_layers,
    upgrade_caffemodel,
    write_caffemodel,
)
from pipeline.weights.format import (
    HDF5,
    NPZ,
    SAFETENSORS,
    TORCH,
    NamedBlobs,
    group_keys,
    layer_blob_names,
    name_hint,
    weights_format,
)
from pipeline.weights.h5 import H5Blob, H5Layer, open_hdf5_layers, read_hdf5_weights, write_hdf5
from pipeline.weights.safetensors import SafetensorsBlob, open_safetensors_layers

__all__ = [
    "CopyReport",
    "atomic_write",
    "atomic_writer",
    "copy_layer_blobs",
    "copy_weights",
    "layer_arrays_from_caffemodel",
    "net_to_proto",
    "parse_caffemodel",
    "read_caffemodel",
    "read_caffemodel_blobs",
    "read_hdf5_weights",
    "read_mean",
    "read_npz_weights",
    "read_torch_weights",
    "read_weight_arrays",
    "save_caffemodel",
    "save_caffemodel_h5",
    "upgrade_caffemodel",
    "weights_format",
]

log = logging.getLogger("pipeline")


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # in the file, not in the net
    missing: list[str] = field(default_factory=list)  # in the net with blobs, not in the file


# ----- reading ---------------------------------------------------------------------------------------------
def read_caffemodel_blobs(path: str | Path) -> list[tuple[str, list[BlobRef]]]:
    """Each layer's (name, blobs) with the floats left in the file until copied (see BlobRef)."""
    return scan_caffemodel(path)


def layer_arrays_from_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Every layer that has blobs: its blobs as float32 arrays in the shapes the layer's blobs have, which is
    how Caffe's net.save() writes them: an old file's legacy 4-D shapes are upgraded (a V1 InnerProduct weight
    stored as [1, 1, 500, 800] comes back [500, 800], its bias [500]), other shapes stay as stored."""
    result = {}
    for name, kind, blobs in scan_caffemodel_layers(path):
        if blobs:
            arrays = []
            for i, blob in enumerate(blobs):
                array = _read_array(path, name, i, blob)
                arrays.append(array.reshape(layer_blob_shape(kind, i, array.shape, blob.legacy)))
            result[name] = arrays
    return result


def _read_array(origin, name: str, index: int, blob) -> np.ndarray:
    try:
        if isinstance(blob, caffe_pb2.BlobProto):
            return blob_to_array(blob)
        if isinstance(blob, torch.Tensor):
            return blob.detach().to("cpu", torch.float32).numpy()
        return blob.read()
    except (ValueError, OSError, RuntimeError) as exc:
        raise WeightsError(f"{origin}: layer '{name}' blob {index}: {exc}") from None


def read_weight_arrays(path: str | Path) -> dict[str, list[np.ndarray | None]]:
    """Every layer with blobs as float32 arrays, in file order, whatever the format (by content): a caffemodel's
    in the layers' blob shapes (see layer_arrays_from_caffemodel); HDF5 with None for a blob shared with an
    earlier layer and stored by it only; tensor files keyed "<layer>.<blob name>" in the file's blob order."""
    path = Path(path)
    kind = weights_format(path)
    if kind == HDF5:
        return read_hdf5_weights(path)
    if kind == NPZ:
        return {name: _as_list(blobs) for name, blobs in read_npz_weights(path).items()}
    if kind in (SAFETENSORS, TORCH):
        with _tensor_layers(path, kind) as layers:
            return {
                name: [_read_array(path, name, i, b) for i, b in enumerate(_as_list(blobs))]
                for name, blobs in layers.items()
                if blobs
            }
    with _caffemodel_errors(path):
        return layer_arrays_from_caffemodel(path)


def _as_list(blobs) -> list:
    return list(blobs.values()) if isinstance(blobs, NamedBlobs) else list(blobs)


def read_npz_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Arrays keyed "<layer>/<index>" (the reference weights.npz layout; layer names may contain '/')."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return group_keys(path, ((key, npz[key]) for key in npz.files))
    except WeightsError:
        raise
    except Exception as exc:  # np.load raises OSError, ValueError, BadZipFile, EOFError... on a bad file
        raise WeightsError(f"{path}: not a readable .npz of weights: {exc}") from None


def read_torch_weights(path: str | Path) -> dict[str, list[torch.Tensor] | NamedBlobs]:
    """A torch.save'd state dict ({"<layer>.<blob name>" or "<layer>/<i>": tensor}) grouped by layer.

    Read with torch.load(weights_only=True): torch's restricted unpickler, which rebuilds tensors and plain
    containers only (no code runs); memory-mapped for zip files, so the tensors stay in the file until copied."""
    try:
        if str(path).endswith(".safetensors"):  # torch.load would take the name's word for it: give it the bytes
            with open(path, "rb") as f:
                state = torch.load(f, map_location="cpu", weights_only=True)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # torch.load raises pickle, zip, runtime and type errors on a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable torch file (torch.load, weights_only): {first}") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict ({{name: tensor}})")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            inner = " (a checkpoint? save its model's state_dict alone)" if isinstance(value, Mapping) else ""
            raise WeightsError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: not a state dict{inner}"
            )
        if not value.dtype.is_floating_point:
            raise WeightsError(f"{path}: tensor '{key}' is {value.dtype}, not a float type")
    return group_keys(path, state.items())


def _is_zip(path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _tensor_layers(path, kind):
    """A context manager yielding {layer: blobs} of a safetensors or torch file."""
    return open_safetensors_layers(path) if kind == SAFETENSORS else nullcontext(read_torch_weights(path))


def read_mean(path: str | Path) -> np.ndarray:
    """A mean image: Caffe's .binaryproto (a BlobProto; shape (1, C, H, W) for the usual legacy dims) or .npy."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except Exception as exc:
            raise WeightsError(f"{path}: not a readable .npy mean: {exc}") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read mean file: {exc.strerror or exc}") from None
    if not data:
        raise WeightsError(f"{path}: empty file, not a mean .binaryproto")
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
        del data
        if not (len(blob.data) or len(blob.double_data)):
            raise WeightsError(f"{path}: not a mean .binaryproto: the BlobProto holds no values")
        array = blob_to_array(blob)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{path}: not a valid mean .binaryproto (BlobProto): {exc}") from None
    return array


# ----- copying into a net ----------------------------------------------------------------------------------
def copy_weights(net, path: str | Path, rename: dict[str, str] | None = None) -> CopyReport:
    """Fill `net`'s layer blobs from a weights file by layer name (`rename` maps file names to net names).

    The format comes from the file's content (weights_format): Caffe's HDF5 layout, safetensors, a torch state
    dict, .npz arrays, else a binary caffemodel. Tensor files are keyed "<layer>.<blob name>" or "<layer>/<i>".
    """
    path = Path(path)
    kind = weights_format(path)
    if kind == HDF5:
        with open_hdf5_layers(path) as layers:
            return copy_layer_blobs(net, layers, str(path), rename)
    if kind == NPZ:
        return copy_layer_blobs(net, read_npz_weights(path), str(path), rename)
    if kind in (SAFETENSORS, TORCH):
        with _tensor_layers(path, kind) as layers:
            return copy_layer_blobs(net, layers, str(path), rename)
    with _caffemodel_errors(path):
        layers = scan_caffemodel(path)
    return copy_layer_blobs(net, layers, str(path), rename, first_of_name=True)


@contextmanager
def _caffemodel_errors(path):
    """A file read as a caffemodel that is none: its error says what the file's name claimed it was."""
    try:
        yield
    except WeightsError as exc:
        hint = name_hint(path)
        if not hint:
            raise
        raise WeightsError(f"{exc}{hint}") from None


def shared_non_owners(net) -> set[tuple[str, int]]:
    """(layer, blob index) of blobs that share an earlier layer's blob by ParamSpec name (Caffe's param_owners_)."""
    seen, result = set(), set()
    for layer in net.layers:
        for index in range(len(layer.blobs)):
            name = layer.param.param[index].name if index < len(layer.param.param) else ""
            if name:
                if name in seen:
                    result.add((layer.name, index))
                seen.add(name)
    return result


def copy_layer_blobs(
    net,
    source: Mapping[str, object] | Iterable[tuple[str, object]],
    origin: str,
    rename: dict[str, str] | None = None,
    first_of_name: bool = False,
) -> CopyReport:
    """Copy `source` ({layer: blobs} or [(layer, blobs)]) into `net`. Blobs may be arrays, BlobProtos, BlobRefs,
    or an H5Layer (Caffe's HDF5 rules).

    Where the net has several layers of one name, the file's layer of that name goes to the last of them, as
    Caffe's CopyTrainedLayersFromHDF5 finds it (layer_names_index_), or with `first_of_name` to the first, as
    CopyTrainedLayersFrom(NetParameter) finds it for a binary caffemodel (a scan from the first layer)."""
    report = CopyReport()
    rename = rename or {}
    shared = None
    by_name = net.layer_by_name
    if first_of_name:
        by_name = {}
        for layer in net.layers:
            by_name.setdefault(layer.name, layer)
    filled: set[int] = set()
    items = source.items() if isinstance(source, Mapping) else source
    for file_name, blobs in items:
        name = rename.get(file_name, file_name)
        layer = by_name.get(name)
        if layer is None:
            report.ignored.append(file_name)
            log.info("Ignoring source layer %s", file_name)
            continue
        targets = layer.blobs
        if isinstance(blobs, NamedBlobs):
            blobs = _by_blob_name(origin, name, layer, blobs)
        if isinstance(blobs, H5Layer):
            if blobs.links > len(targets):
                raise WeightsError(
                    f"{origin}: layer '{name}': incompatible number of blobs: file has {blobs.links} "
                    f"entries in 'data/{name}', net expects {len(targets)}"
                )
            blobs = [blobs.blobs.get(i) for i in range(len(targets))]
        elif len(targets) != len(blobs):
            raise WeightsError(
                f"{origin}: layer '{name}': incompatible number of blobs: file has {len(blobs)}, "
                f"net expects {len(targets)}"
            )
        for i, (target, blob) in enumerate(zip(targets, blobs)):
            if blob is not None:
                _copy_blob(origin, name, i, target, blob)
                continue
            # Only a blob shared with an earlier layer may be absent (Caffe's HDF5 files store it once).
            shared = shared if shared is not None else shared_non_owners(net)
            if (name, i) not in shared:
                where = f"dataset 'data/{name}/{i}' is missing" if origin.endswith((".h5", ".hdf5")) else "missing"
                raise WeightsError(f"{origin}: layer '{name}' blob {i}: {where}")
        if targets:
            report.copied.append(name)
            filled.add(id(layer))
    report.missing = [layer.name for layer in net.layers if layer.blobs and id(layer) not in filled]
    return report


def _by_blob_name(origin: str, name: str, layer, blobs: NamedBlobs) -> list:
    """A file layer's {blob name: blob} in the order of the net layer's blobs."""
    names = layer_blob_names(layer)
    unknown = [key for key in blobs if key not in names]
    if unknown or len(blobs) != len(names):
        raise WeightsError(
            f"{origin}: layer '{name}': incompatible blobs: file has {', '.join(blobs) or 'none'}, net's "
            f"{layer.type_name} layer has {', '.join(names) or 'none'}"
        )
    return [blobs[key] for key in names]


def _copy_blob(origin: str, name: str, index: int, target: torch.Tensor, blob) -> None:
    where = f"{origin}: layer '{name}' blob {index}"
    wanted = tuple(target.shape)
    try:
        if isinstance(blob, (caffe_pb2.BlobProto, BlobRef)):
            legacy = has_legacy_shape(blob) if isinstance(blob, caffe_pb2.BlobProto) else blob.legacy
            shape = blob_shape(blob) if isinstance(blob, caffe_pb2.BlobProto) else blob.shape
            if not shape_equals(legacy, shape, wanted):
                raise WeightsError(
                    f"{where}: shape mismatch: file has {list(shape)}"
                    f"{' (legacy num/channels/height/width)' if legacy else ''}, net expects "
                    f"{list(wanted)}"
                )
            if isinstance(blob, BlobRef):
                blob.read_into(target)
                return
            array = blob_to_array(blob)
        elif isinstance(blob, (H5Blob, SafetensorsBlob, torch.Tensor)):
            shape = tuple(blob.shape)
            if shape != wanted:
                raise WeightsError(f"{where}: shape mismatch: file has {list(shape)}, net expects {list(wanted)}")
            if isinstance(blob, torch.Tensor):
                with torch.no_grad():
                    target.copy_(blob)
            else:
                blob.read_into(target)
            return
        else:
            array = np.asarray(blob, dtype=np.float32)
            if array.size != target.numel() or (array.shape != wanted and array.ndim > 1):
                raise WeightsError(f"{where}: shape mismatch: file has {list(array.shape)}, net expects {list(wanted)}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(wanted))
    except (ValueError, OSError, RuntimeError) as exc:
        raise WeightsError(f"{where}: {exc}") from None


# ----- writing ---------------------------------------------------------------------------------------------
def _layer_records(net, for_file: bool = False):
    """(LayerParameter without blobs, blob tensors) per layer, as Caffe's Layer::ToProto sees its layer_param_
    after set-up: Split layers included, `phase` inherited from the net, a loss layer's default loss_weight 1
    (LossLayer::LayerSetUp), BatchNorm's ParamSpecs padded with lr_mult 0 (BatchNormLayer::LayerSetUp)."""
    for layer in net.layers:
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(layer.param)
        del param.blobs[:]
        if not param.HasField("phase"):
            param.phase = net.phase
        if getattr(layer, "is_loss", False) and not param.loss_weight:
            param.loss_weight.append(1.0)
        if for_file and param.type == "Swish" and param.HasField("swish_param"):
            # Where BVLC master writes swish_param (field 147, our KD parameter's number; see upgrade.py).
            param.knowledge_distillation_param.ParseFromString(param.swish_param.SerializeToString())
            param.ClearField("swish_param")
        if param.type == "BatchNorm":
            while len(param.param) < len(layer.blobs):
                param.param.add(lr_mult=0.0)
        yield param, [blob.detach().to("cpu", torch.float32).numpy() for blob in layer.blobs]


def net_to_proto(net) -> caffe_pb2.NetParameter:
    """The net's layers with their blobs, as Caffe's Net::ToProto writes a .caffemodel."""
    proto = caffe_pb2.NetParameter(name=net.name)
    for param, arrays in _layer_records(net):
        out = proto.layer.add()
        out.CopyFrom(param)
        for array in arrays:
            array_to_blob(array, out.blobs.add())
    return proto


def save_caffemodel(net, path: str | Path) -> None:
    """Caffe's net.save(): a V2 binary NetParameter, blobs in `shape` form, streamed from the tensors."""
    try:
        with atomic_writer(path) as f:
            write_caffemodel(f, net.name, _layer_records(net, for_file=True))
    except OSError as exc:
        raise WeightsError(f"{path}: cannot write: {exc.strerror or exc}") from None


def save_caffemodel_h5(net, path: str | Path) -> None:
    """Caffe's net.save_hdf5(): data/<layer>/<i>, shared blobs stored by their owner only. A net with two layers
    of one name is refused: Caffe's Net::ToHDF5 makes a group per layer and fails on the second (a
    .caffemodel, like Caffe's Net::ToProto, writes every layer)."""
    names = [layer.name for layer in net.layers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise WeightsError(
            f"{path}: layer name(s) {', '.join(repr(n) for n in twice)} used more than once: an HDF5 file holds "
            "one group per name (Caffe's HDF5 snapshot fails on them too): save a .caffemodel instead"
        )
    shared = shared_non_owners(net)
    layers = (
        (
            layer.name,
            [
                None if (layer.name, i) in shared else blob.detach().to("cpu", torch.float32).numpy()
                for i, blob in enumerate(layer.blobs)
            ],
        )
        for layer in net.layers
    )
    try:
        write_hdf5(path, layers)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot write: {exc.strerror or exc}") from None
