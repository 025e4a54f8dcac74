"""WindowData: R-CNN's window sampling (Caffe's WindowDataLayer), cropped and warped windows of listed images.

The window file (`window_data_param.source`) is a whitespace-separated stream of records, one per image:

    # image_index          (0, 1, 2, ... in order: Caffe looks the image up by this number)
    image_path             (root_folder + image_path, without spaces)
    channels height width  (channels must be 3: images are read in colour, BGR)
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines; corners inclusive, 0-based pixels)

A window whose overlap is >= fg_threshold is foreground (its class must be > 0); one below bg_threshold is
background and gets label 0; others are dropped. The file is checked at set-up: errors name the file and line.

Every batch holds batch_size - int(batch_size * fg_fraction) background windows, then the foreground ones, each
drawn uniformly at random (with replacement) from its set, then a mirror coin when `mirror` is set (in both phases,
as Caffe). A window is cut out of its image and warped (bilinear) to crop_size x crop_size. With context_pad > 0 or
crop_mode "square" the window is first grown about its centre (to a square in "square" mode, then by
crop_size / (crop_size - 2 * context_pad), so that the warped window has context_pad pixels of context on each
side); the part of the grown window outside the image is not sampled, and its share of the output (scaled like the
rest) stays zero. Mirroring flips the warped window and its padding. Values are (pixel - mean) * scale over the
warped pixels only: zero padding stays 0. The mean is a mean_file (indexed at the output pixel, offset by
(mean_width - crop_size) / 2 as Caffe does, never mirrored) or mean_value (1 or 3 values).

Parameters as Caffe reads them in a current net: crop_size, mirror, mean_file and mean_value from transform_param;
scale from window_data_param (transform_param.scale is ignored by Caffe's WindowData; we warn). With cache_images
every image file's encoded bytes are read at set-up and decoded per window (as Caffe's Datum cache); without it each
window reads its image from disk, so memory is bounded by one batch.

Differences from Caffe: the random stream is a numpy generator seeded from the net's (not Caffe's PrefetchRand
stream). The warp follows OpenCV's INTER_LINEAR grid (half-pixel centres, edge clamping, no antialiasing;
pipeline/data/images.py) in floating point where OpenCV uses fixed-point weights, so a warped pixel may differ from
Caffe's by 1. Failures that Caffe logs and skips (an image that cannot be read) or that crash it (a window outside
its image, an out-of-order image index) are errors naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.data.images import COLOR, decode_image, read_image, resize_linear
from pipeline.data.transform import load_mean_file
from pipeline.errors import DataError
from pipeline.glog import get_logger
from pipeline.net.layers.base_data import PrefetchingDataLayer
from pipeline.net.layers.registry import register

# Columns of a window row.
IMAGE, LABEL, X1, Y1, X2, Y2, LINE = range(7)
CHANNELS = 3


class WindowFile:
    """A parsed window file: images [(path, (channels, height, width), line)] and foreground/background windows
    as int64 rows (image index, label, x1, y1, x2, y2, line in the file)."""

    def __init__(self, path: str, root_folder: str, fg_threshold: float, bg_threshold: float):
        self.path = path
        self.images: list[tuple[str, tuple[int, int, int], int]] = []
        fg, bg = [], []
        self.label_counts: dict[int, int] = {0: 0}
        tokens = self._tokens()
        fg_threshold, bg_threshold = np.float32(fg_threshold), np.float32(bg_threshold)
        first = next(tokens, None)
        if first is None:
            raise DataError(f"window file '{path}' is empty")
        hashtag = first
        while hashtag is not None:
            image_index = len(self.images)
            if hashtag[0] != "#":
                self.fail(hashtag[1], f"expected '#' starting image record {image_index}, got {hashtag[0]!r}")
            index, line = self._int(tokens, "the image index after '#'", hashtag[1])
            if index != image_index:
                self.fail(
                    line,
                    f"image index {index} out of order: expected {image_index} (images are numbered 0, 1, "
                    "2, ... in file order; Caffe looks each window's image up by this number)",
                )
            name, name_line = self._next(tokens, "the image path", line)
            channels, line = self._int(tokens, "the image channels", line)
            height, line = self._int(tokens, "the image height", line)
            width, line = self._int(tokens, "the image width", line)
            if channels != CHANNELS:
                self.fail(
                    line,
                    f"image '{name}' has {channels} channels: WindowData reads images in colour "
                    f"({CHANNELS} channels), so the window file must say {CHANNELS}",
                )
            if height <= 0 or width <= 0:
                self.fail(line, f"image '{name}' has size {height}x{width}: height and width must be positive")
            self.images.append((root_folder + name, (channels, height, width), name_line))
            count, line = self._int(tokens, "the number of windows", line)
            if count < 0:
                self.fail(line, f"image '{name}': the number of windows is {count}")
            for number in range(count):
                what = f"window {number + 1} of {count} of image {image_index}"
                label, line = self._int(tokens, f"the class of {what}", line)
                overlap, line = self._float(tokens, f"the overlap of {what}", line)
                x1, line = self._int(tokens, f"x1 of {what}", line)
                y1, line = self._int(tokens, f"y1 of {what}", line)
                x2, line = self._int(tokens, f"x2 of {what}", line)
                y2, line = self._int(tokens, f"y2 of {what}", line)
                if not (0 <= x1 <= x2 < width and 0 <= y1 <= y2 < height):
                    self.fail(
                        line,
                        f"window ({x1}, {y1}, {x2}, {y2}) of image '{name}' is not a box inside its "
                        f"{width}x{height} image (need 0 <= x1 <= x2 < width, 0 <= y1 <= y2 < height)",
                    )
                if overlap >= fg_threshold:
                    if label <= 0:
                        self.fail(
                            line,
                            f"foreground window (overlap {overlap:g} >= fg_threshold "
                            f"{fg_threshold:g}) has class {label}: foreground classes must be > 0",
                        )
                    fg.append((image_index, label, x1, y1, x2, y2, line))
                    self.label_counts[label] = self.label_counts.get(label, 0) + 1
                elif overlap < bg_threshold:
                    bg.append((image_index, 0, x1, y1, x2, y2, line))
                    self.label_counts[0] += 1
            hashtag = next(tokens, None)
        self.fg = np.array(fg, dtype=np.int64).reshape(-1, 7)
        self.bg = np.array(bg, dtype=np.int64).reshape(-1, 7)

    def fail(self, line: int, message: str):
        raise DataError(f"window file '{self.path}':{line}: {message}")

    def _tokens(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                for number, text in enumerate(f, 1):
                    for token in text.split():
                        yield token, number
        except OSError as exc:
            raise DataError(f"cannot open window file '{self.path}' ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"window file '{self.path}' is not a text file") from None

    def _next(self, tokens, what: str, line: int) -> tuple[str, int]:
        token = next(tokens, None)
        if token is None:
            self.fail(line, f"the file ends where {what} should be")
        return token

    def _int(self, tokens, what: str, line: int) -> tuple[int, int]:
        token, line = self._next(tokens, what, line)
        try:
            return int(token), line
        except ValueError:
            self.fail(line, f"expected {what} (an integer), got {token!r}")

    def _float(self, tokens, what: str, line: int) -> tuple[float, int]:
        token, line = self._next(tokens, what, line)
        try:
            value = np.float32(token)
        except ValueError:
            value = None
        if value is None or not np.isfinite(value):
            self.fail(line, f"expected {what} (a number), got {token!r}")
        return value, line


def _round(x) -> int:
    """C's round(): halves away from zero."""
    x = float(x)
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


class WindowBatches:
    """The producer of WindowData batches (holds no reference to the layer, for the prefetch thread)."""

    def __init__(
        self,
        windows: WindowFile,
        batch_size: int,
        fg_fraction: float,
        crop_size: int,
        context_pad: int,
        square: bool,
        mirror: bool,
        scale: float,
        mean,
        mean_values,
        cache: list[bytes] | None,
        seed: int,
    ):
        self.source, self.images = windows.path, windows.images
        self.fg, self.bg = windows.fg, windows.bg
        self.batch_size, self.crop, self.context_pad = batch_size, crop_size, context_pad
        self.num_fg = int(np.float32(batch_size) * np.float32(fg_fraction))
        self.square, self.mirror, self.scale = square, mirror, np.float32(scale)
        self.mean, self.mean_values, self.cache = mean, mean_values, cache
        self.mean_off = (mean.shape[2] - crop_size) // 2 if mean is not None else 0
        self.rng = np.random.default_rng(seed)

    def image(self, index: int) -> np.ndarray:
        path = self.images[index][0]
        if self.cache is not None:
            return decode_image(self.cache[index], COLOR, what=f"'{path}'")
        return read_image(path, is_color=True)

    def geometry(self, x1: int, y1: int, x2: int, y2: int, rows: int, cols: int, mirrored: bool):
        """Caffe's window arithmetic: the (clipped) source box, the warped size and the top-left padding."""
        crop = self.crop
        out_h = out_w = crop
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.square:
            f32 = np.float32
            context_scale = f32(crop) / f32(crop - 2 * self.context_pad)
            half_height = f32((y2 - y1 + 1) / 2.0)
            half_width = f32((x2 - x1 + 1) / 2.0)
            center_x = f32(x1) + half_width
            center_y = f32(y1) + half_height
            if self.square:
                half_height = half_width = max(half_height, half_width)
            x1 = _round(center_x - half_width * context_scale)
            x2 = _round(center_x + half_width * context_scale)
            y1 = _round(center_y - half_height * context_scale)
            y2 = _round(center_y + half_height * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x = f32(crop) / f32(unclipped_w)
            scale_y = f32(crop) / f32(unclipped_h)
            out_w = _round(f32(x2 - x1 + 1) * scale_x)
            out_h = _round(f32(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _round(f32(pad_x1) * scale_x), _round(f32(pad_x2) * scale_x)
            pad_y1 = _round(f32(pad_y1) * scale_y)
            pad_h = pad_y1
            pad_w = pad_x2 if mirrored else pad_x1
            # The warped region plus its padding may overshoot the crop by rounding.
            out_h = min(out_h, crop - pad_h)
            out_w = min(out_w, crop - pad_w)
        return (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w)

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        crop = self.crop
        data = np.zeros((self.batch_size, CHANNELS, crop, crop), np.float32)
        labels = np.zeros(self.batch_size, np.float32)
        item = 0
        for windows, count in ((self.bg, self.batch_size - self.num_fg), (self.fg, self.num_fg)):
            for _ in range(count):
                window = windows[self.rng.integers(len(windows))]
                mirrored = bool(self.mirror and self.rng.integers(2))
                image = self.image(int(window[IMAGE]))
                self._place(data[item], image, window, mirrored)
                labels[item] = window[LABEL]
                item += 1
        return data, labels

    def _place(self, out: np.ndarray, image: np.ndarray, window: np.ndarray, mirrored: bool) -> None:
        _, rows, cols = image.shape
        x1, y1, x2, y2 = (int(v) for v in window[X1 : Y2 + 1])
        path = self.images[int(window[IMAGE])][0]
        if x2 >= cols or y2 >= rows:
            raise DataError(
                f"window ({x1}, {y1}, {x2}, {y2}) at '{self.source}':{int(window[LINE])} lies outside image "
                f"'{path}', which is {cols}x{rows} (the window file says {self.images[int(window[IMAGE])][1][2]}x"
                f"{self.images[int(window[IMAGE])][1][1]})"
            )
        (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w) = self.geometry(x1, y1, x2, y2, rows, cols, mirrored)
        if out_h <= 0 or out_w <= 0:
            raise DataError(
                f"window at '{self.source}':{int(window[LINE])} warps to an empty {out_h}x{out_w} region "
                f"(crop_size {self.crop}, context_pad {self.context_pad})"
            )
        warped = resize_linear(np.ascontiguousarray(image[:, y1 : y2 + 1, x1 : x2 + 1]), out_h, out_w)
        if mirrored:
            warped = warped[:, :, ::-1]
        values = warped.astype(np.float32)
        if self.mean is not None:
            top, left = self.mean_off + pad_h, self.mean_off + pad_w
            values -= self.mean[:, top : top + out_h, left : left + out_w]
        elif self.mean_values is not None:
            values -= self.mean_values[:, None, None]
        values *= self.scale
        out[:, pad_h : pad_h + out_h, pad_w : pad_w + out_w] = values


@register("WindowData")
class WindowData(PrefetchingDataLayer):
    num_tops = (2, 2)

    def open_source(self):
        param, transform = self.param.window_data_param, self.param.transform_param
        log = get_logger()
        self.check(bool(param.source), "window_data_param.source (the window file) is not set")
        self.check(param.batch_size > 0, f"window_data_param.batch_size must be positive, got {param.batch_size}")
        crop = transform.crop_size
        moved = [f for f in ("crop_size", "mirror", "mean_file") if param.HasField(f)]
        if moved:
            log.warning(
                "%s: window_data_param.%s is ignored (Caffe's WindowData reads transform_param's)",
                self.name,
                ", ".join(moved),
            )
        if transform.HasField("scale"):
            log.warning(
                "%s: transform_param.scale is ignored (Caffe's WindowData reads window_data_param.scale)", self.name
            )
        self.check(crop > 0, "transform_param.crop_size must be positive: it is the size windows are warped to")
        self.check(
            2 * param.context_pad < crop, f"context_pad {param.context_pad} must be less than half of crop_size {crop}"
        )
        self.check(0 <= param.fg_fraction <= 1, f"fg_fraction must be in [0, 1], got {param.fg_fraction:g}")
        if param.crop_mode not in ("warp", "square"):
            log.warning(
                "%s: crop_mode %r is neither 'warp' nor 'square'; warping (as Caffe does)", self.name, param.crop_mode
            )
        log.info(
            "Window data layer: foreground (object) overlap threshold: %g, background (non-object) overlap "
            "threshold: %g, foreground sampling fraction: %g, cache_images: %d, root_folder: %s",
            param.fg_threshold,
            param.bg_threshold,
            param.fg_fraction,
            param.cache_images,
            param.root_folder,
        )
        windows = WindowFile(param.source, param.root_folder, param.fg_threshold, param.bg_threshold)
        log.info("Number of images: %d", len(windows.images))
        for label in sorted(windows.label_counts):
            log.info("class %d has %d samples", label, windows.label_counts[label])
        for kind, found in (("foreground", windows.fg), ("background", windows.bg)):
            if not len(found):
                raise DataError(
                    f"window file '{param.source}' has no {kind} window (foreground: overlap >= fg_threshold "
                    f"{param.fg_threshold:g}; background: overlap < bg_threshold {param.bg_threshold:g}); "
                    "Caffe's WindowData needs both"
                )
        log.info("Amount of context padding: %d", param.context_pad)
        log.info("Crop mode: %s", param.crop_mode)
        mean, mean_values = self._mean(transform, crop)
        cache = None
        if param.cache_images:
            cache = []
            for path, _, line in windows.images:
                try:
                    cache.append(Path(path).read_bytes())
                except OSError as exc:
                    raise DataError(
                        f"could not open or find the image '{path}' (window file '{param.source}':{line}): "
                        f"{exc.strerror or exc}"
                    ) from None
        batches = WindowBatches(
            windows,
            param.batch_size,
            param.fg_fraction,
            crop,
            param.context_pad,
            param.crop_mode == "square",
            transform.mirror,
            param.scale,
            mean,
            mean_values,
            cache,
            self.draw_seed(),
        )
        shape = (param.batch_size, CHANNELS, crop, crop)
        log.info("output data size: %s", ",".join(map(str, shape)))
        return [shape, (param.batch_size,)], batches

    def _mean(self, transform, crop: int):
        if transform.HasField("mean_file"):
            if len(transform.mean_value):
                raise DataError("transform_param: cannot specify mean_file and mean_value at the same time")
            get_logger().info("Loading mean file from: %s", transform.mean_file)
            mean = load_mean_file(transform.mean_file)
            channels, height, width = mean.shape
            offset = (width - crop) // 2
            if channels != CHANNELS or width < crop or offset + crop > height:
                raise DataError(
                    f"mean_file '{transform.mean_file}' is {list(mean.shape)} (C, H, W): WindowData needs "
                    f"{CHANNELS} channels and room for a {crop}x{crop} crop at offset {offset} (its (width - "
                    "crop_size) / 2, used for rows and columns)"
                )
            return np.ascontiguousarray(mean, dtype=np.float32), None
        if len(transform.mean_value):
            values = np.asarray(transform.mean_value, dtype=np.float32)
            if len(values) not in (1, CHANNELS):
                raise DataError(f"specify either 1 mean_value or as many as channels ({CHANNELS}); got {len(values)}")
            return None, np.broadcast_to(values, (CHANNELS,)).copy()
        return None, None
