"""A net's blobs as a safetensors file keyed "<layer>/<blob index>" (Caffe's blob order, as in weights.npz).

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a JSON header
{key: {dtype, shape, data_offsets}, "__metadata__": {str: str}} padded with spaces to 8 bytes, then the raw
little-endian tensors. It is written and read here directly, one blob at a time from and into the net's own
tensor memory, so a VGG-16-sized file never exists as a second copy in memory (the `safetensors` package's
`save_file` first turns every tensor into bytes). Files load with `safetensors.torch.load_file` too, and
nothing here unpickles anything.

The metadata carries the deploy prototxt text, so the file alone rebuilds the module (`net_from_safetensors`).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import WeightsError
from pipeline.fileio import atomic_writer
from pipeline.weights import CopyReport

_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2")}
_MAX_HEADER = 100 << 20
FORMAT = "caffe-pipeline"


def blob_items(net):
    """("<layer>/<i>", tensor) for every blob of every layer, in net order (shared blobs under each layer)."""
    for layer in net.layers:
        for i, blob in enumerate(layer.blobs):
            yield f"{layer.name}/{i}", blob


def state_dict(net) -> dict[str, torch.Tensor]:
    """The net's blobs keyed "<layer>/<i>" (detached, on the CPU, float32, in plain row-major memory even where a
    layer keeps its blob otherwise, as Convolution does): what `save_safetensors` writes."""
    return {key: blob.detach().to("cpu", torch.float32).contiguous() for key, blob in blob_items(net)}


def _header(entries: list[tuple[str, tuple[int, ...], int]], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, shape, nbytes in entries:
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def save_safetensors(net, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write every blob of `net` to `path` (atomically), keys "<layer>/<i>", float32."""
    items = list(blob_items(net))
    entries = [(key, tuple(blob.shape), blob.numel() * 4) for key, blob in items]
    meta = {"format": FORMAT, "keys": "<layer>/<blob index>", "net": net.name or ""}
    meta.update(metadata or {})
    header = _header(entries, {k: str(v) for k, v in meta.items()})
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for _, blob in items:
            array = blob.detach().to("cpu", torch.float32).contiguous().numpy()
            f.write(memoryview(array.reshape(-1).astype("<f4", copy=False)).cast("B"))


def read_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensor entries, metadata, offset of the data) of a safetensors file, checked against the file size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise WeightsError(f"{path}: {'empty file' if size == 0 else 'too short'}, not a safetensors file")
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(size - 8, _MAX_HEADER):
                raise WeightsError(
                    f"{path}: header length {length} does not fit the file ({size} bytes): "
                    "not a safetensors file, or truncated"
                )
            raw = f.read(length)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: header is not valid JSON: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: header is not a JSON object: not a safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - length
    for key, entry in header.items():
        _check_entry(path, key, entry, data_size)
    if not isinstance(metadata, dict):
        raise WeightsError(f"{path}: __metadata__ is not a JSON object")
    return header, metadata, 8 + length


def _check_entry(path, key: str, entry, data_size: int) -> None:
    where = f"{path}: tensor '{key}'"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise WeightsError(f"{where}: entry needs dtype, shape and data_offsets")
    if entry["dtype"] not in _DTYPES:
        raise WeightsError(f"{where}: dtype {entry['dtype']!r} is not a float type ({', '.join(_DTYPES)})")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise WeightsError(f"{where}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise WeightsError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise WeightsError(f"{where}: data_offsets {offsets} lie outside the {data_size} data bytes (truncated?)")
    if end - begin != math.prod(shape) * _DTYPES[entry["dtype"]].itemsize:
        raise WeightsError(f"{where}: {end - begin} bytes do not hold shape {shape} of {entry['dtype']}")


def _grouped(path, header: dict[str, dict]) -> dict[str, dict[int, dict]]:
    grouped: dict[str, dict[int, dict]] = {}
    for key, entry in header.items():
        layer, _, index = key.rpartition("/")
        if not layer or not index.isdigit():
            raise WeightsError(f"{path}: key '{key}' is not '<layer>/<blob index>'")
        grouped.setdefault(layer, {})[int(index)] = entry
    for layer, blobs in grouped.items():
        if sorted(blobs) != list(range(len(blobs))):
            raise WeightsError(f"{path}: layer '{layer}': blob indices {sorted(blobs)} are not 0..{len(blobs) - 1}")
    return grouped


def load_safetensors(net, path: str | Path) -> CopyReport:
    """Copy a "<layer>/<i>" safetensors file into `net` with Caffe's rules (by layer name, blob count and shapes
    must match; layers the net lacks are skipped and reported). The values go straight into the net's tensors."""
    header, _, data_start = read_header(path)
    grouped = _grouped(path, header)
    report = CopyReport()
    try:
        f = open(path, "rb", buffering=0)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with f:
        for name, blobs in grouped.items():
            layer = getattr(net, "layer_by_name", {}).get(name)
            if layer is None:
                report.ignored.append(name)
                continue
            targets = layer.blobs
            if len(targets) != len(blobs):
                raise WeightsError(
                    f"{path}: layer '{name}': incompatible number of blobs: file has {len(blobs)}, "
                    f"net expects {len(targets)}"
                )
            for i, target in enumerate(targets):
                _read_into(f, path, f"{name}/{i}", blobs[i], data_start, target)
            if targets:
                report.copied.append(name)
    copied = set(report.copied)
    report.missing = [layer.name for layer in net.layers if layer.blobs and layer.name not in copied]
    return report


def _read_into(f, path, key: str, entry: dict, data_start: int, target: torch.Tensor) -> None:
    shape = tuple(entry["shape"])
    if shape != tuple(target.shape):
        raise WeightsError(
            f"{path}: layer '{key.rpartition('/')[0]}' blob {key.rpartition('/')[2]}: shape "
            f"mismatch: file has {list(shape)}, net expects {list(target.shape)}"
        )
    dtype = _DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    direct = (
        dtype == np.dtype("<f4")
        and target.dtype == torch.float32
        and target.device.type == "cpu"
        and target.is_contiguous()
    )
    buffer = target.detach().numpy() if direct else np.empty(shape, dtype=dtype)
    view = memoryview(buffer.reshape(-1)).cast("B")
    f.seek(data_start + begin)
    got = f.readinto(view) if end > begin else 0
    if got != end - begin:
        raise WeightsError(f"{path}: tensor '{key}': file ends inside its data ({got} of {end - begin} bytes)")
    if not direct:
        with torch.no_grad():
            target.copy_(torch.from_numpy(buffer.astype(dtype.newbyteorder("="), copy=False)).view(target.shape))


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    return read_header(path)[1]


def net_from_safetensors(path: str | Path):
    """Rebuild the net a `save_safetensors` file came from (its prototxt is in the metadata) with its weights."""
    from pipeline.export.deploy import build_net_for_weights
    from pipeline.proto import caffe_pb2
    from pipeline.prototxt import parse_text

    metadata = read_safetensors_metadata(path)
    if "prototxt" not in metadata:
        raise WeightsError(f"{path}: no 'prototxt' in the metadata: give the prototxt and use load_safetensors")
    param = parse_text(metadata["prototxt"], caffe_pb2.NetParameter(), f"{path}:prototxt")
    net, _ = build_net_for_weights(param, [path], source=str(path))
    return net
