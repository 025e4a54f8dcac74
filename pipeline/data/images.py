"""Images as Caffe's OpenCV calls see them: uint8 channel planes (C, H, W), colour in B, G, R order.

Caffe reads and decodes images with OpenCV (imread / imdecode), which returns BGR; its DataTransformer and
`CVMatToDatum` keep that order. We decode with Pillow and swap to BGR so that nets trained by Caffe on these images
see the same channels. Resizing follows OpenCV's INTER_LINEAR sampling grid (half-pixel centres, edge clamping,
no antialiasing); OpenCV rounds through fixed-point weights, so a resized pixel may differ from OpenCV's by 1.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import DataError

COLOR, GRAY, NATIVE = "color", "gray", "native"
_GRAY_MODES = ("1", "L", "LA", "I", "F")
_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}


def to_planes(image: Image.Image, mode: str = NATIVE) -> np.ndarray:
    """A Pillow image as uint8 planes: `color` (3 planes, BGR), `gray` (1 plane) or `native` (as stored)."""
    if image.mode.startswith("I;16"):
        # OpenCV reads 16-bit images into 8 bits by keeping the high byte.
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8), "L")
    if mode == NATIVE:
        mode = GRAY if image.mode in _GRAY_MODES else COLOR
    if mode == GRAY:
        return np.ascontiguousarray(np.asarray(image.convert("L"))[None])
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def decode_image(data: bytes, mode: str = NATIVE, what: str = "image") -> np.ndarray:
    """Encoded bytes (PNG, JPEG, ...) to planes; a DataError naming `what` if they do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_planes(image, mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{what}: cannot decode the image ({exc})") from None


def read_image(path: str | Path, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray:
    """Caffe's ReadImageToCVMat: decode in colour or grey, then resize to (height, width) when both are > 0."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"could not open or find the image '{path}' ({exc.strerror or exc})") from None
    planes = decode_image(data, COLOR if is_color else GRAY, what=f"'{path}'")
    if height > 0 and width > 0:
        planes = resize_linear(planes, height, width)
    return planes


def _axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's linear interpolation along one axis."""
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    frac[lo < 0] = 0.0
    lo = lo.clip(0, src - 1)
    frac[lo >= src - 1] = 0.0
    return lo, np.minimum(lo + 1, src - 1), frac


def resize_linear(planes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of uint8 planes (C, H, W) to (C, height, width) on OpenCV's INTER_LINEAR grid."""
    _, src_h, src_w = planes.shape
    if (src_h, src_w) == (height, width):
        return planes
    y0, y1, fy = _axis(src_h, height)
    x0, x1, fx = _axis(src_w, width)
    img = planes.astype(np.float64)
    rows = img[:, y0, :] * (1 - fy)[None, :, None] + img[:, y1, :] * fy[None, :, None]
    out = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    return np.floor(out + 0.5).clip(0, 255).astype(np.uint8)


def encode_image(planes: np.ndarray, fmt: str) -> bytes:
    """Planes (BGR or grey) to an encoded file of `fmt` (png, jpg, ...), as cv::imencode writes it."""
    name = _FORMATS.get(fmt.lower().lstrip("."))
    if name is None:
        raise DataError(f"unknown image encoding '{fmt}' (known: {', '.join(sorted(_FORMATS))})")
    if planes.shape[0] == 1:
        image = Image.fromarray(planes[0], "L")
    else:
        image = Image.fromarray(np.ascontiguousarray(planes[::-1].transpose(1, 2, 0)), "RGB")
    out = io.BytesIO()
    # OpenCV's default JPEG quality is 95 (Pillow's is 75).
    image.save(out, format=name, **({"quality": 95} if name == "JPEG" else {}))
    return out.getvalue()


def read_list_file(path: str | Path) -> list[tuple[str, int]]:
    """Caffe's "path label" list file: the label follows the last space, so paths may contain spaces."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"cannot open the image list '{path}' ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"the image list '{path}' is not a text file") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        name, sep, label = line.rpartition(" ")
        try:
            if not sep or not name:
                raise ValueError
            lines.append((name, int(label)))
        except ValueError:
            raise DataError(f"{path}:{number}: expected 'path label', got {line!r}") from None
    if not lines:
        raise DataError(f"the image list '{path}' is empty")
    return lines


class ImageBatches:
    """ImageDataLayer's reading loop: list entries in order (shuffled per epoch if asked), decoded and transformed."""

    def __init__(
        self,
        lines,
        root_folder: str,
        height: int,
        width: int,
        is_color: bool,
        batch_size: int,
        transformer,
        shuffle: bool = False,
        rng: np.random.Generator | None = None,
        skip: int = 0,
    ):
        self.lines, self.root = list(lines), root_folder
        self.height, self.width, self.is_color = height, width, is_color
        self.batch_size, self.transformer = batch_size, transformer
        self.shuffle, self.rng = shuffle, rng if rng is not None else np.random.default_rng()
        if shuffle:
            self._shuffle()
        self.position = skip % len(self.lines)

    def _shuffle(self) -> None:
        self.lines = [self.lines[i] for i in self.rng.permutation(len(self.lines))]

    def image(self, index: int) -> np.ndarray:
        # Caffe joins root_folder and the listed path by plain concatenation.
        return read_image(self.root + self.lines[index][0], self.height, self.width, self.is_color)

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for _ in range(self.batch_size):
            planes = self.image(self.position)
            if images and planes.shape != images[0].shape and not self.transformer.crop_size:
                raise DataError(
                    f"'{self.root + self.lines[self.position][0]}' is {_size(planes)} but this batch "
                    f"began with a {_size(images[0])} image: set new_height/new_width or crop_size"
                )
            images.append(planes)
            labels.append(self.lines[self.position][1])
            self.position += 1
            if self.position >= len(self.lines):
                self.position = 0
                if self.shuffle:
                    self._shuffle()
        return self.transformer(images), np.asarray(labels, dtype=np.float32)


def _size(planes: np.ndarray) -> str:
    return "x".join(str(d) for d in planes.shape)
