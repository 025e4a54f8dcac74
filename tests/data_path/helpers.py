"""Shared by the data-path tests: nets around one data layer, small databases, Caffe's transform as loops."""

from __future__ import annotations

import numpy as np

from pipeline.data.convert import write_images
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string


def data_net(layer: str, phase: str = "TRAIN", seed: int = 1) -> Net:
    """A net holding just `layer` (prototxt text of one `layer { ... }`)."""
    return Net(net_from_string(layer), phase, seed=seed)


def data_layer(source, batch: int, tops=("data", "label"), transform: str = "", extra: str = "", name="mnist"):
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return (
        f'layer {{ name: "{name}" type: "Data" {top_lines} transform_param {{ {transform} }} '
        f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }} }}'
    )


def random_images(count: int, shape=(1, 6, 5), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *shape), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def make_db(path, count: int = 10, shape=(1, 6, 5), seed: int = 0):
    images, labels = random_images(count, shape, seed)
    write_images(path, images, labels, "%08d")
    return images, labels


def caffe_transform(x: np.ndarray, scale=1.0, mean=None, mean_values=(), crop=0, h_off=0, w_off=0, mirror=False):
    """DataTransformer::Transform for one (C, H, W) item, written as Caffe's loops, in float32."""
    channels, height, width = x.shape
    out_h, out_w = (crop, crop) if crop else (height, width)
    out = np.zeros((channels, out_h, out_w), np.float32)
    scale = np.float32(scale)
    values = list(mean_values) * channels if len(mean_values) == 1 else list(mean_values)
    for c in range(channels):
        for h in range(out_h):
            for w in range(out_w):
                element = np.float32(x[c, h_off + h, w_off + w])
                if mean is not None:
                    value = (element - np.float32(mean[c, h_off + h, w_off + w])) * scale
                elif values:
                    value = (element - np.float32(values[c])) * scale
                else:
                    value = element * scale
                out[c, h, out_w - 1 - w if mirror else w] = value
    return out
