"""ImageData over PNGs written in tmp_path: BGR planes, grey, resize, root_folder, seeded shuffle, labels."""

import numpy as np
import pytest

from pipeline.data.images import encode_image

from .helpers import caffe_transform, data_net

RNG = np.random.default_rng(4)


@pytest.fixture
def images(tmp_path):
    pictures = [RNG.integers(0, 256, (3, 6, 8), dtype=np.uint8) for _ in range(5)]
    (tmp_path / "pics").mkdir()
    for i, planes in enumerate(pictures):
        (tmp_path / "pics" / f"im {i}.png").write_bytes(encode_image(planes, "png"))  # spaces are allowed
    (tmp_path / "list.txt").write_text("".join(f"im {i}.png {10 + i}\n" for i in range(5)))
    return tmp_path, pictures


def image_layer(tmp_path, batch=2, extra="", transform=""):
    return (
        f'layer {{ name: "images" type: "ImageData" top: "data" top: "label" transform_param {{ {transform} }} '
        f'image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path / "pics"}/" '
        f"batch_size: {batch} {extra} }} }}"
    )


def test_colour_images_in_bgr_order_with_labels(images):
    tmp_path, pictures = images
    net = data_net(image_layer(tmp_path, transform="scale: 0.5 mean_value: 1 mean_value: 2 mean_value: 3"))
    assert net.blob_shapes == {"data": (2, 3, 6, 8), "label": (2,)}
    seen = []
    for _ in range(3):
        out = net.forward()
        seen += out["label"].tolist()
        for y, label in zip(out["data"].numpy(), out["label"].tolist()):
            expected = caffe_transform(pictures[int(label) - 10], 0.5, mean_values=[1, 2, 3])
            np.testing.assert_array_equal(y, expected)
    assert seen == [10, 11, 12, 13, 14, 10]  # wraps after the last line


def test_grey_resize_and_crop(images):
    tmp_path, pictures = images
    net = data_net(
        image_layer(tmp_path, extra="is_color: false new_height: 3 new_width: 4", transform="crop_size: 2"),
        phase="TEST",
    )
    assert net.blob_shapes["data"] == (2, 1, 2, 2)
    assert net.forward()["data"].dtype.is_floating_point


def test_shuffle_is_seeded_and_covers_every_image(images):
    tmp_path, _ = images
    layer = image_layer(tmp_path, batch=5, extra="shuffle: true")
    orders = [data_net(layer, seed=s).forward()["label"].tolist() for s in (7, 7, 8, 9, 10)]
    assert orders[0] == orders[1]
    assert all(sorted(o) == [10, 11, 12, 13, 14] for o in orders)
    assert len({tuple(o) for o in orders}) > 1
