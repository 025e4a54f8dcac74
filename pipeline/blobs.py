"""BlobProto <-> numpy, with Caffe's legacy (num, channels, height, width) shapes."""

from __future__ import annotations

import numpy as np

from pipeline.proto import caffe_pb2


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return (len(blob.data) or len(blob.double_data),)


def blob_to_array(blob: caffe_pb2.BlobProto, dtype=np.float32) -> np.ndarray:
    values = blob.double_data if len(blob.double_data) else blob.data
    array = np.asarray(values, dtype=dtype)
    shape = blob_shape(blob)
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"blob holds {array.size} values but its shape {list(shape)} needs "
                         f"{int(np.prod(shape, dtype=np.int64))}")
    return array.reshape(shape)


def array_to_blob(array, blob: caffe_pb2.BlobProto | None = None) -> caffe_pb2.BlobProto:
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    array = np.asarray(array, dtype=np.float32)
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())
    return blob


def legacy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Caffe's LegacyShape: the shape padded with leading 1s to 4 axes (only defined for <= 4 axes)."""
    return (1,) * (4 - len(shape)) + tuple(shape)


def shapes_match(blob: caffe_pb2.BlobProto, target: tuple[int, ...]) -> bool:
    """Caffe's Blob::ShapeEquals: legacy 4-D shapes match any shape with the same padded dims."""
    if blob.HasField("shape") or not any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return blob_shape(blob) == tuple(target)
    return len(target) <= 4 and legacy_shape(tuple(target)) == blob_shape(blob)
