"""Caffe's DataTransformer: crop, mirror, mean subtraction and scaling of uint8 (or float) image planes.

For every item Caffe first draws the mirror coin (when `mirror` is set, in either phase), then the crop offsets
(random in TRAIN, centred in TEST), and writes out[c, h, w] = (x[c, h_off + h, w_off + w'] - mean) * scale in float32,
where w' = crop_width - 1 - w when mirrored. A mean file is indexed at the source pixel (it is cropped and mirrored
with the image); mean values are per channel (one value serves all channels). Randomness comes from a numpy
generator seeded by the layer, so a run is reproducible for a given seed (Caffe's own RNG stream is not reproduced).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import DataError
from pipeline.proto import caffe_pb2
from pipeline.weights.blobs import blob_to_array

from .images import COLOR, GRAY, NATIVE

TRAIN = caffe_pb2.TRAIN
_LEGACY_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def transform_param_of(layer_param: caffe_pb2.LayerParameter, legacy=None) -> caffe_pb2.TransformationParameter:
    """The layer's transform_param, completed by the deprecated copies in its data_param-like message (Caffe's
    UpgradeNetDataTransformation moves scale/mean_file/crop_size/mirror into transform_param)."""
    param = caffe_pb2.TransformationParameter()
    param.CopyFrom(layer_param.transform_param)
    if legacy is not None:
        for field in _LEGACY_FIELDS:
            if legacy.HasField(field) and not param.HasField(field):
                setattr(param, field, getattr(legacy, field))
    return param


def load_mean_file(path: str | Path) -> np.ndarray:
    """A mean image from a `.binaryproto` BlobProto, as float32 planes (C, H, W)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read mean_file '{path}' ({exc.strerror or exc})") from None
    try:
        mean = blob_to_array(caffe_pb2.BlobProto.FromString(raw))
    except (DecodeError, ValueError) as exc:
        raise DataError(f"mean_file '{path}' is not a valid BlobProto (.binaryproto): {exc}") from None
    if mean.ndim == 4 and mean.shape[0] >= 1:
        return np.ascontiguousarray(mean[0])
    if mean.ndim == 3:
        return mean
    raise DataError(f"mean_file '{path}' holds a blob of shape {list(mean.shape)}, not an image (1, C, H, W)")


class DataTransformer:
    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int = TRAIN, seed: int | None = None):
        self.param, self.phase = param, phase
        self.scale = np.float32(param.scale)
        self.crop_size = int(param.crop_size)
        self.mirror = bool(param.mirror)
        if param.force_color and param.force_gray:
            raise DataError("transform_param: cannot set both force_color and force_gray")
        self.mean = None
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise DataError("transform_param: cannot specify mean_file and mean_value at the same time")
            self.mean = load_mean_file(param.mean_file)
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        # Caffe seeds its transformer RNG only when something is random.
        self.needs_rand = self.mirror or (phase == TRAIN and self.crop_size > 0)
        self.rng = np.random.default_rng(seed)

    @property
    def decode_mode(self) -> str:
        """How encoded records decode: force_color, force_gray, or as stored."""
        return COLOR if self.param.force_color else GRAY if self.param.force_gray else NATIVE

    def output_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) of a transformed (C, H, W) input; a DataError for crops, means or mean values that do not fit."""
        channels, height, width = shape
        if channels <= 0:
            raise DataError(f"an image of shape {list(shape)} has no channels")
        crop = self.crop_size
        if crop and (height < crop or width < crop):
            raise DataError(f"crop_size {crop} is larger than the {height}x{width} image")
        if self.mean is not None and self.mean.shape != tuple(shape):
            raise DataError(
                f"mean_file '{self.param.mean_file}' is {list(self.mean.shape)} but the data is {list(shape)} (C, H, W)"
            )
        if len(self.mean_values) not in (0, 1, channels):
            raise DataError(
                f"specify either 1 mean_value or as many as channels ({channels}); got {len(self.mean_values)}"
            )
        return (channels, crop, crop) if crop else (channels, height, width)

    def __call__(self, images) -> np.ndarray:
        """Transform a batch: an array (N, C, H, W) or a list of (C, H, W) arrays. Returns float32 (N, C, h, w)."""
        if not isinstance(images, np.ndarray):
            shapes = sorted({x.shape for x in images})
            if len(shapes) > 1:
                if not self.crop_size or len({s[0] for s in shapes}) > 1:
                    raise DataError(
                        f"images of shapes {list(shapes[0])} and {list(shapes[1])} in one batch: "
                        "resize them, or crop (crop_size) images with the same channels"
                    )
                # Items of different sizes (allowed with crop_size): one at a time, in order.
                return np.concatenate([self(x[None]) for x in images])
            images = np.stack(images)
        count, channels, height, width = images.shape
        out_c, out_h, out_w = self.output_shape((channels, height, width))
        mirrored, h_off, w_off = self._draws(count, height, width)

        x, mean = images, self.mean
        if self.crop_size:
            # Every item's crop window, gathered at once from a strided view of all windows.
            windows = sliding_window_view(images, (out_h, out_w), axis=(2, 3))
            x = windows[np.arange(count), :, h_off, w_off]
            if mean is not None:
                mean = sliding_window_view(mean, (out_h, out_w), axis=(1, 2)).transpose(1, 2, 0, 3, 4)[h_off, w_off]
        x = x.astype(np.float32)
        if mean is not None:
            out = np.subtract(x, mean, out=x)
        elif len(self.mean_values):
            out = np.subtract(x, np.broadcast_to(self.mean_values, (out_c,))[None, :, None, None], out=x)
        else:
            out = x
        out = np.multiply(out, self.scale, out=out)
        if mirrored.any():
            # The mean is mirrored with the image (Caffe indexes it at the source pixel), so flipping the result
            # is the same as flipping both inputs.
            out[mirrored] = out[mirrored][..., ::-1]
        return out

    def _draws(self, count: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per item, in Caffe's order: the mirror coin, then the crop offsets."""
        highs = [2] if self.mirror else []
        random_crop = self.crop_size and self.phase == TRAIN
        if random_crop:
            highs += [height - self.crop_size + 1, width - self.crop_size + 1]
        draws = self.rng.integers(0, highs, size=(count, len(highs))) if highs else np.zeros((count, 0), np.int64)
        mirrored = draws[:, 0].astype(bool) if self.mirror else np.zeros(count, bool)
        if random_crop:
            return mirrored, draws[:, -2], draws[:, -1]
        h_off = (height - self.crop_size) // 2 if self.crop_size else 0
        w_off = (width - self.crop_size) // 2 if self.crop_size else 0
        return mirrored, np.full(count, h_off), np.full(count, w_off)
