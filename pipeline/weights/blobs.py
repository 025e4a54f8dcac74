"""BlobProto <-> numpy, following Caffe's Blob::FromProto / ToProto / ShapeEquals.

A blob's shape comes from the legacy (num, channels, height, width) fields whenever any of them is present,
else from `shape` (no `shape` at all is a 0-axis blob holding one value). Float data is `data`, or
`double_data` when that is non-empty. Caffe writes `data` (float32) then `shape`, nothing else.

Besides messages, blobs can be located inside a file's bytes (`BlobRef`) and read straight into a tensor, and
encoded from an array's memory (`encode_blob`): large caffemodels never exist as a second full copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from pipeline.proto import caffe_pb2
from pipeline.weights.wire import FIXED32, FIXED64, LEN, VARINT, WireError, encode_varint, iter_fields, len_header

_LEGACY = ("num", "channels", "height", "width")
# BlobProto field numbers.
_NUM, _CHANNELS, _HEIGHT, _WIDTH, _DATA, _DIFF, _SHAPE, _DOUBLE_DATA = 1, 2, 3, 4, 5, 6, 7, 8


def has_legacy_shape(blob: caffe_pb2.BlobProto) -> bool:
    return any(blob.HasField(f) for f in _LEGACY)


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    if has_legacy_shape(blob):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def shape_count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def check_shape(shape: tuple[int, ...]) -> None:
    if any(d < 0 for d in shape):
        raise ValueError(f"blob shape {list(shape)} has a negative dimension")


def blob_to_array(blob: caffe_pb2.BlobProto, dtype=np.float32) -> np.ndarray:
    """The blob's values in its own shape; ValueError when the data does not fill the shape."""
    values = blob.double_data if len(blob.double_data) else blob.data
    shape = blob_shape(blob)
    check_shape(shape)
    array = np.asarray(values, dtype=dtype)
    if array.size != shape_count(shape):
        raise ValueError(f"blob holds {array.size} values but its shape {list(shape)} needs {shape_count(shape)}")
    return array.reshape(shape)


def legacy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Caffe's LegacyShape: the shape padded with leading 1s to 4 axes (only defined for <= 4 axes)."""
    return (1,) * (4 - len(shape)) + tuple(shape)


def shape_equals(legacy: bool, shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Caffe's Blob::ShapeEquals: legacy 4-D dims match any target of <= 4 axes with the same padded dims."""
    if legacy:
        return len(target) <= 4 and legacy_shape(tuple(target)) == tuple(shape)
    return tuple(shape) == tuple(target)


def shapes_match(blob: caffe_pb2.BlobProto, target: tuple[int, ...]) -> bool:
    return shape_equals(has_legacy_shape(blob), blob_shape(blob), target)


# ----- writing ---------------------------------------------------------------------------------------------
def encode_blob_parts(array) -> tuple[bytes, memoryview, bytes]:
    """Caffe's Blob::ToProto as (data header, float32 payload, shape field): join them for the BlobProto bytes.

    The payload is a view of the array's memory when it is already little-endian float32 and contiguous.
    """
    array = np.asarray(array, dtype="<f4", order="C")  # (ascontiguousarray would make a 0-axis blob 1-axis)
    payload = memoryview(array.reshape(-1)).cast("B")
    data_header = len_header(_DATA, payload.nbytes) if payload.nbytes else b""
    shape = b""
    if array.ndim:
        dims = b"".join(encode_varint(int(d)) for d in array.shape)
        shape_message = len_header(1, len(dims)) + dims
        shape = len_header(_SHAPE, len(shape_message)) + shape_message
    return data_header, payload, shape


def encode_blob(array) -> bytes:
    header, payload, shape = encode_blob_parts(array)
    return b"".join((header, payload, shape))


def array_to_blob(array, blob: caffe_pb2.BlobProto | None = None) -> caffe_pb2.BlobProto:
    """Fill `blob` (cleared first) as Caffe's Blob::ToProto does: `shape` and float32 `data`."""
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    blob.Clear()
    blob.ParseFromString(encode_blob(array))
    return blob


# ----- blobs located in a file -----------------------------------------------------------------------------
@dataclass
class BlobRef:
    """A BlobProto inside a file: its shape fields and where its float payload lies, read on demand."""

    path: str
    legacy: bool = False
    shape: tuple[int, ...] = ()
    dtype: str = "<f4"
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (file offset, byte count) of the values
    message: tuple[int, int] | None = None  # whole-message range, for the rare unpacked encoding
    _parsed: caffe_pb2.BlobProto | None = field(default=None, repr=False, compare=False)

    @property
    def count(self) -> int:
        if self.message is not None:
            return len(self._proto().double_data or self._proto().data)
        return sum(n for _, n in self.chunks) // np.dtype(self.dtype).itemsize

    def _proto(self) -> caffe_pb2.BlobProto:
        if self._parsed is None:
            start, end = self.message
            with open(self.path, "rb") as f:
                f.seek(start)
                self._parsed = caffe_pb2.BlobProto.FromString(f.read(end - start))
        return self._parsed

    def read(self) -> np.ndarray:
        """The values as float32 in the blob's own shape (ValueError if they do not fill it)."""
        import torch

        if self.count != shape_count(self.shape):
            raise ValueError(
                f"blob holds {self.count} values but its shape {list(self.shape)} needs {shape_count(self.shape)}"
            )
        out = torch.empty(self.shape, dtype=torch.float32)
        self.read_into(out)
        return out.numpy()

    def read_into(self, target) -> None:
        """Copy the values into the tensor `target` (same element count); straight from the file where possible."""
        import torch  # (imported here: the upgrade tools use this module without needing torch)

        count = shape_count(target.shape)
        if self.count != count:
            raise ValueError(
                f"blob holds {self.count} values but its shape {list(self.shape)} needs {shape_count(self.shape)}"
            )
        if self.message is not None:
            array = blob_to_array(self._proto()).reshape(tuple(target.shape))
            with torch.no_grad():
                target.copy_(torch.from_numpy(np.ascontiguousarray(array)))
            return
        direct = (
            self.dtype == "<f4"
            and target.dtype == torch.float32
            and target.device.type == "cpu"
            and target.is_contiguous()
        )
        buffer = target.detach().numpy() if direct else np.empty(count, dtype=self.dtype)
        view = memoryview(buffer.reshape(-1)).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            filled = 0
            for offset, nbytes in self.chunks:
                f.seek(offset)
                got = f.readinto(view[filled : filled + nbytes])
                if got != nbytes:
                    raise ValueError(f"file ends inside the blob data ({got} of {nbytes} bytes)")
                filled += nbytes
        if direct:
            torch.autograd.graph.increment_version(target)  # written behind autograd's back: say so
        else:
            with torch.no_grad():
                target.copy_(torch.from_numpy(buffer).view(target.shape))


def scan_blob(buf, start: int, end: int, path: str) -> BlobRef:
    """Locate a BlobProto's fields in buf[start:end] (offsets in buf are offsets in the file)."""
    ref = BlobRef(path=os.fspath(path))
    legacy = [0, 0, 0, 0]
    shape_bytes = []
    floats: list[tuple[int, int]] = []
    doubles: list[tuple[int, int]] = []
    for number, wire_type, a, b in iter_fields(buf, start, end):
        if number in (_NUM, _CHANNELS, _HEIGHT, _WIDTH) and wire_type == VARINT:
            ref.legacy = True
            value = a & 0xFFFFFFFF  # int32 field: the low 32 bits, sign-extended
            legacy[number - 1] = value - (1 << 32) if value >= 1 << 31 else value
        elif number == _SHAPE and wire_type == LEN:
            shape_bytes.append(bytes(buf[a:b]))
        elif number == _DATA and wire_type == LEN:
            if (b - a) % 4:
                raise WireError("packed float data whose length is not a multiple of 4")
            floats.append((a, b - a))
        elif number == _DOUBLE_DATA and wire_type == LEN:
            if (b - a) % 8:
                raise WireError("packed double data whose length is not a multiple of 8")
            doubles.append((a, b - a))
        elif (number == _DATA and wire_type == FIXED32) or (number == _DOUBLE_DATA and wire_type == FIXED64):
            ref.message = (start, end)  # values written one by one: let protobuf gather them
    if ref.legacy:
        ref.shape = tuple(legacy)
    else:
        shape = caffe_pb2.BlobShape()
        shape.ParseFromString(b"".join(shape_bytes))
        ref.shape = tuple(int(d) for d in shape.dim)
    check_shape(ref.shape)
    if doubles:
        ref.dtype, ref.chunks = "<f8", doubles
    else:
        ref.chunks = floats
    if ref.message is not None:
        ref._proto()
    return ref
