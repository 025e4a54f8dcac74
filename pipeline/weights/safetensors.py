"""Reading safetensors weights (https://huggingface.co/docs/safetensors) without the safetensors package.

The format: an 8-byte little-endian header length, a JSON header {key: {dtype, shape, data_offsets}, "__metadata__":
{str: str}}, then the raw little-endian tensors. The header is checked against the file size before anything is
read (bounded: 100 MiB at most), and each tensor is read from the file straight into the net's own tensor memory
when copied, so loading never holds a second copy of the weights. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import WeightsError
from pipeline.weights.format import NamedBlobs, group_keys

DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2")}
MAX_HEADER = 100 << 20


def read_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensor entries, metadata, offset of the data) of a safetensors file, checked against the file size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise WeightsError(f"{path}: {'empty file' if size == 0 else 'too short'}, not a safetensors file")
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(size - 8, MAX_HEADER):
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
    if entry["dtype"] not in DTYPES:
        raise WeightsError(f"{where}: dtype {entry['dtype']!r} is not a float type ({', '.join(DTYPES)})")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise WeightsError(f"{where}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise WeightsError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise WeightsError(f"{where}: data_offsets {offsets} lie outside the {data_size} data bytes (truncated?)")
    if end - begin != math.prod(shape) * DTYPES[entry["dtype"]].itemsize:
        raise WeightsError(f"{where}: {end - begin} bytes do not hold shape {shape} of {entry['dtype']}")


@dataclass
class SafetensorsBlob:
    """One tensor of an open safetensors file, read on demand (`read`, or `read_into` a net tensor)."""

    file: object  # the open, unbuffered file
    path: str
    key: str
    entry: dict
    data_start: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.entry["shape"])

    def _read(self, buffer: np.ndarray) -> None:
        begin, end = self.entry["data_offsets"]
        self.file.seek(self.data_start + begin)
        got = self.file.readinto(memoryview(buffer.reshape(-1)).cast("B")) if end > begin else 0
        if got != end - begin:
            raise WeightsError(
                f"{self.path}: tensor '{self.key}': file ends inside its data ({got} of {end - begin} bytes)"
            )

    def read(self) -> np.ndarray:
        dtype = DTYPES[self.entry["dtype"]]
        buffer = np.empty(self.shape, dtype=dtype)
        self._read(buffer)
        return buffer.astype(np.float32)

    def read_into(self, target: torch.Tensor) -> None:
        dtype = DTYPES[self.entry["dtype"]]
        direct = (
            dtype == np.dtype("<f4")
            and target.dtype == torch.float32
            and target.device.type == "cpu"
            and target.is_contiguous()
        )
        if direct:
            self._read(target.detach().numpy())
            torch.autograd.graph.increment_version(target)
            return
        buffer = np.empty(self.shape, dtype=dtype)
        self._read(buffer)
        with torch.no_grad():
            target.copy_(torch.from_numpy(buffer.astype(dtype.newbyteorder("="), copy=False)).view(target.shape))


@contextmanager
def open_safetensors_layers(path: str | Path) -> Iterator[dict[str, list[SafetensorsBlob] | NamedBlobs]]:
    """{layer: blobs} of a safetensors file (keys "<layer>.<blob name>" or "<layer>/<index>") while it is open."""
    header, _, data_start = read_header(path)
    try:
        f = open(path, "rb", buffering=0)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with f:
        yield group_keys(
            path, ((key, SafetensorsBlob(f, str(path), key, entry, data_start)) for key, entry in header.items())
        )
