"""WindowData: Caffe's window file, fg/bg sampling, warping with context padding and square crops, mirror, mean,
scale, clear errors for bad window files, and a net in the shape of BVLC's finetune_pascal_detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.images import encode_image, resize_linear
from pipeline.errors import DataError, NetBuildError
from pipeline.net import Net
from pipeline.net.layers.window_data import WindowBatches
from pipeline.text.prototxt import net_from_string
from pipeline.weights.blobs import array_to_blob

RNG = np.random.default_rng(7)
# BGR planes (C, H, W) of two made-up images.
IMAGES = {
    "a.png": RNG.integers(0, 256, (3, 12, 16), dtype=np.uint8),
    "b.png": RNG.integers(0, 256, (3, 20, 20), dtype=np.uint8),
}

# One image record per (name, [(class, overlap, x1, y1, x2, y2), ...]).
DEFAULT = [
    ("a.png", [(1, 0.9, 2, 3, 5, 6), (7, 0.4, 0, 0, 3, 3), (4, 0.1, 8, 4, 11, 7)]),
    ("b.png", [(2, 0.75, 4, 2, 7, 11), (0, 0.0, 0, 0, 3, 3)]),
]


def window_text(records, folder="imgs/") -> str:
    lines = []
    for index, (name, windows) in enumerate(records):
        channels, height, width = IMAGES[name].shape if name in IMAGES else (3, 10, 10)
        lines += [f"# {index}", folder + name, str(channels), str(height), str(width), str(len(windows))]
        lines += [" ".join(str(v) for v in w) for w in windows]
    return "\n".join(lines) + "\n"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    for name, planes in IMAGES.items():
        (tmp_path / "imgs" / name).write_bytes(encode_image(planes, "png"))
    (tmp_path / "windows.txt").write_text(window_text(DEFAULT))
    return tmp_path


def layer_text(batch=8, crop=4, transform="", extra="", source="windows.txt", phase=""):
    return (
        f'layer {{ name: "win" type: "WindowData" top: "data" top: "label" {phase} '
        f"transform_param {{ crop_size: {crop} {transform} }} "
        f'window_data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}'
    )


def window_net(seed=1, **kw) -> Net:
    return Net(net_from_string(layer_text(**kw)), seed=seed)


def batches(net, n=1):
    out = [net.forward() for _ in range(n)]
    return np.concatenate([o["data"].numpy() for o in out]), np.concatenate([o["label"].numpy() for o in out])


def test_fg_bg_fractions_and_labels(folder):
    net = window_net(batch=8, extra="fg_fraction: 0.25")
    assert net.blob_shapes == {"data": (8, 3, 4, 4), "label": (8,)}
    for _ in range(5):
        labels = net.forward()["label"].numpy()
        # Background first (label 0, whatever class the file gives it), then int(8 * 0.25) = 2 foreground.
        assert list(labels[:6]) == [0] * 6
        assert set(labels[6:]) <= {1, 2} and (labels[6:] > 0).all()
    # Overlap 0.4 lies between the thresholds (bg 0.3): the class-7 window is dropped; the class-4 one is background.
    net = window_net(batch=10, extra="fg_fraction: 0.3 fg_threshold: 0.5 bg_threshold: 0.3")
    _, labels = batches(net, 20)
    assert set(labels) == {0, 1, 2}
    assert [(labels.reshape(20, 10)[i] > 0).sum() for i in range(20)] == [3] * 20  # int(10 * 0.3)


def test_same_seed_same_batches(folder):
    a, b = window_net(seed=5, transform="mirror: true"), window_net(seed=5, transform="mirror: true")
    for _ in range(3):
        np.testing.assert_array_equal(a.forward()["data"].numpy(), b.forward()["data"].numpy())


def only(name, *window):
    """A window file where each of the two sets holds one window of image `name` (bg from image b)."""
    return [(name, [window]), ("b.png", [(0, 0.0, 0, 0, 3, 3)])]


def test_plain_warp_of_a_crop_sized_window_is_the_pixels(folder):
    # Window (2, 3)-(5, 6) of image a is 4x4: warping it to crop_size 4 changes nothing.
    (folder / "w.txt").write_text(window_text(only("a.png", 3, 0.8, 2, 3, 5, 6)))
    net = window_net(source="w.txt", batch=2, crop=4, extra='fg_fraction: 0.5 scale: 0.5 root_folder: ""')
    data, labels = batches(net)
    assert labels.tolist() == [0, 3]
    expected = IMAGES["a.png"][:, 3:7, 2:6].astype(np.float32) * np.float32(0.5)
    np.testing.assert_array_equal(data[1], expected)
    np.testing.assert_array_equal(data[0], IMAGES["b.png"][:, 0:4, 0:4] * np.float32(0.5))


def test_warp_resizes_with_opencv_linear_grid(folder):
    (folder / "w.txt").write_text(window_text(only("b.png", 2, 0.8, 4, 2, 7, 11)))
    data, _ = batches(window_net(source="w.txt", batch=2, crop=6, extra="fg_fraction: 0.5"))
    np.testing.assert_array_equal(data[1], resize_linear(IMAGES["b.png"][:, 2:12, 4:8], 6, 6))


def sampler(crop, context_pad=0, square=False):
    class Windows:  # the parts of a WindowFile the geometry needs
        path, images, fg, bg = "w.txt", [], np.zeros((1, 7), np.int64), np.zeros((1, 7), np.int64)

    return WindowBatches(Windows(), 2, 0.5, crop, context_pad, square, False, 1.0, None, None, None, 0)


def test_geometry_by_hand():
    # context_pad 2, crop 8: the 4x4 window (0,0)-(3,3) grows by 8 / 4 = 2 about its centre (2, 2) to (-2)..6,
    # 9 pixels wide; 2 lie left of the image, so columns 0..6 (7 wide) are warped to round(7 * 8/9) = 6 and the
    # left padding is round(2 * 8/9) = 2. Mirrored, the padding moves right (left pad = the right's, 0).
    s = sampler(8, context_pad=2)
    assert s.geometry(0, 0, 3, 3, rows=16, cols=16, mirrored=False) == ((0, 0, 6, 6), (6, 6), (2, 2))
    assert s.geometry(0, 0, 3, 3, rows=16, cols=16, mirrored=True) == ((0, 0, 6, 6), (6, 6), (2, 0))
    # Square, no padding: the 4 wide x 10 high window (4,2)-(7,11) becomes the 10x10 square about (6, 7):
    # columns round(6 - 5) = 1 .. round(6 + 5) = 11 and rows 2..12 (11 pixels each way), warped to 10x10.
    s = sampler(10, square=True)
    assert s.geometry(4, 2, 7, 11, rows=20, cols=20, mirrored=False) == ((1, 2, 11, 12), (10, 10), (0, 0))
    # Near the right and bottom edges the square is clipped; its padding is at the far side, so none is at the
    # top-left unless mirrored.
    # (14,12)-(17,19): the 8x8 square about (16, 16) spans 12..20, one pixel past the image each way; the 8
    # pixels inside warp to round(8 * 10/9) = 9 and the one outside becomes round(10/9) = 1 pixel of padding.
    assert s.geometry(14, 12, 17, 19, rows=20, cols=20, mirrored=False) == ((12, 12, 19, 19), (9, 9), (0, 0))
    assert s.geometry(14, 12, 17, 19, rows=20, cols=20, mirrored=True) == ((12, 12, 19, 19), (9, 9), (0, 1))
    # Plain warp: the window itself, crop x crop.
    assert sampler(5).geometry(3, 1, 4, 9, rows=20, cols=20, mirrored=False) == ((3, 1, 4, 9), (5, 5), (0, 0))


def test_context_pad_zero_fills_outside_the_image_and_mirror_flips(folder):
    (folder / "w.txt").write_text(window_text(only("b.png", 2, 0.8, 0, 0, 3, 3)))
    warped = resize_linear(IMAGES["b.png"][:, 0:7, 0:7], 6, 6).astype(np.float32)
    warped -= np.array([10, 20, 30], np.float32)[:, None, None]
    expected = np.zeros((3, 8, 8), np.float32)
    expected[:, 2:, 2:] = warped  # the mean is subtracted only where pixels were sampled
    mirrored = np.zeros((3, 8, 8), np.float32)
    mirrored[:, 2:, :6] = warped[:, :, ::-1]
    seen = set()
    for mirror in ("", "mirror: true"):
        means = f"mean_value: 10 mean_value: 20 mean_value: 30 {mirror}"
        net = window_net(source="w.txt", batch=2, crop=8, transform=means, extra="fg_fraction: 0.5 context_pad: 2")
        for _ in range(12 if mirror else 1):
            item = net.forward()["data"].numpy()[1]
            if not mirror:
                np.testing.assert_array_equal(item, expected)
            else:
                flipped = np.array_equal(item, mirrored)
                assert flipped or np.array_equal(item, expected)
                seen.add(flipped)
    assert seen == {True, False}


def test_square_mode_by_hand(folder):
    (folder / "w.txt").write_text(window_text(only("b.png", 2, 0.8, 4, 2, 7, 11)))
    net = window_net(source="w.txt", batch=2, crop=10, extra='fg_fraction: 0.5 crop_mode: "square"')
    data, _ = batches(net)
    np.testing.assert_array_equal(data[1], resize_linear(IMAGES["b.png"][:, 2:13, 1:12], 10, 10))


def test_mean_file_is_indexed_at_the_output_pixel_with_caffe_offset(folder):
    mean = np.arange(3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8) / 10
    (folder / "mean.binaryproto").write_bytes(array_to_blob(mean).SerializeToString())
    (folder / "w.txt").write_text(window_text(only("a.png", 3, 0.8, 2, 3, 5, 6)))
    net = window_net(
        source="w.txt", batch=2, crop=4, transform='mean_file: "mean.binaryproto"', extra="fg_fraction: 0.5 scale: 2"
    )
    data, _ = batches(net)
    # offset (8 - 4) / 2 = 2, rows and columns
    expected = (IMAGES["a.png"][:, 3:7, 2:6].astype(np.float32) - mean[0, :, 2:6, 2:6]) * np.float32(2)
    np.testing.assert_array_equal(data[1], expected)


def test_cache_images_reads_files_once(folder):
    net = window_net(extra="cache_images: true", transform="mirror: true", seed=4)
    (folder / "imgs" / "a.png").unlink()
    (folder / "imgs" / "b.png").unlink()
    data, labels = batches(net, 3)
    assert data.shape == (24, 3, 4, 4) and np.abs(data).sum() > 0


def test_missing_image_is_an_error_at_forward_without_cache(folder):
    (folder / "imgs" / "a.png").unlink()
    net = window_net(extra="fg_fraction: 1")
    with pytest.raises(DataError, match=r"layer 'win' \(WindowData\).*imgs/a.png"):
        for _ in range(10):
            net.forward()
    with pytest.raises(NetBuildError, match=r"imgs/a.png.*windows.txt':2"):
        window_net(extra="cache_images: true")


def bad(folder, text):
    (folder / "bad.txt").write_text(text)
    with pytest.raises(NetBuildError) as info:
        window_net(source="bad.txt")
    assert "layer 'win' (WindowData)" in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "window file 'bad.txt' is empty"),
        ("0\nimgs/a.png\n3 12 16\n1\n1 0.9 0 0 1 1\n", r"'bad.txt':1: expected '#'"),
        ("# 1\nimgs/a.png\n3 12 16\n0\n", r"'bad.txt':1: image index 1 out of order: expected 0"),
        ("# 0\nimgs/a.png\n3 12 16\n2\n1 0.9 0 0 1 1\n", r"'bad.txt':5: the file ends where the class of window 2"),
        (
            "# 0\nimgs/a.png\n3 12 16\n2\n1 0.9 0 0 1 1\n# 1\nimgs/b.png\n3 20 20\n0\n",
            r"'bad.txt':6: expected the class of window 2 of 2 of image 0 \(an integer\), got '#'",
        ),
        ("# 0\nimgs/a.png\n3 12 16\n1\n1 0.9 0 0 16 4\n", r"'bad.txt':5: window \(0, 0, 16, 4\).*16x12"),
        ("# 0\nimgs/a.png\n3 12 16\n1\n1 0.9 5 0 4 4\n", r"'bad.txt':5: window \(5, 0, 4, 4\)"),
        ("# 0\nimgs/a.png\n3 12 16\n1\n0 0.9 0 0 4 4\n", r"'bad.txt':5: foreground window.*class 0"),
        ("# 0\nimgs/a.png\n1 12 16\n1\n1 0.9 0 0 4 4\n", r"'bad.txt':3: image 'imgs/a.png' has 1 channels"),
        ("# 0\nimgs/a.png\n3 12 x\n1\n1 0.9 0 0 4 4\n", r"'bad.txt':3: expected the image width"),
        ("# 0\nimgs/a.png\n3 12 16\n1\n1 nan 0 0 4 4\n", r"'bad.txt':5: expected the overlap"),
        ("# 0\nimgs/a.png\n3 12 16\n-1\n", r"'bad.txt':4: image 'imgs/a.png': the number of windows is -1"),
        ("# 0\nimgs/a.png\n3 12 16\n1\n1 0.9 0 0 4 4\n", "has no background window"),
    ],
)
def test_bad_window_files(folder, text, message):
    assert __import__("re").search(message, bad(folder, text))


def test_missing_window_file_and_bad_params(folder):
    with pytest.raises(NetBuildError, match="cannot open window file 'nope.txt'"):
        window_net(source="nope.txt")
    with pytest.raises(NetBuildError, match="crop_size must be positive"):
        window_net(crop=0)
    with pytest.raises(NetBuildError, match="context_pad 2 must be less than half of crop_size 4"):
        window_net(extra="context_pad: 2")
    with pytest.raises(NetBuildError, match=r"fg_fraction must be in \[0, 1\]"):
        window_net(extra="fg_fraction: 1.5")
    with pytest.raises(NetBuildError, match="1 mean_value or as many as channels"):
        window_net(transform="mean_value: 1 mean_value: 2")
    mean = np.zeros((1, 3, 3, 3), np.float32)
    (folder / "small.binaryproto").write_bytes(array_to_blob(mean).SerializeToString())
    with pytest.raises(NetBuildError, match="mean_file 'small.binaryproto' is \\[3, 3, 3\\]"):
        window_net(transform='mean_file: "small.binaryproto"')


def test_window_outside_the_actual_image_is_an_error(folder):
    # The file says image a is 30x30; it is 16x12, so a window at x 20 cannot be cut from it.
    text = window_text(DEFAULT).replace("imgs/a.png\n3\n12\n16\n3\n", "imgs/a.png\n3\n30\n30\n1\n")
    text = text.replace("1 0.9 2 3 5 6\n7 0.4 0 0 3 3\n4 0.1 8 4 11 7\n", "1 0.9 20 3 25 6\n")
    (folder / "w.txt").write_text(text)
    net = window_net(source="w.txt", extra="fg_fraction: 1")
    with pytest.raises(DataError, match=r"window \(20, 3, 25, 6\) at 'w.txt':7 lies outside image 'imgs/a.png'"):
        net.forward()


PASCAL_SHAPED = """name: "TinyPascalFinetune"
layer { name: "data" type: "WindowData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 11 mean_file: "mean.binaryproto" }
  window_data_param { source: "windows.txt" batch_size: 8 fg_threshold: 0.5 bg_threshold: 0.5 fg_fraction: 0.25
    context_pad: 2 crop_mode: "warp" } }
layer { name: "data" type: "WindowData" top: "data" top: "label" include { phase: TEST }
  transform_param { mirror: true crop_size: 11 mean_file: "mean.binaryproto" }
  window_data_param { source: "windows.txt" batch_size: 8 fg_threshold: 0.5 bg_threshold: 0.5 fg_fraction: 0.25
    context_pad: 2 crop_mode: "warp" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 stride: 2
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc8_pascal" type: "InnerProduct" bottom: "pool1" top: "fc8_pascal"
  param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }
  inner_product_param { num_output: 21
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8_pascal" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8_pascal" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_pascal_finetune_shaped_net(folder, phase):
    # BVLC's examples/finetune_pascal_detection/pascal_finetune_trainval_test.prototxt, CaffeNet cut down to one
    # conv; its loss has no top there (a top here until anonymous loss tops are built).
    mean = np.full((1, 3, 15, 15), 100, np.float32)
    (folder / "mean.binaryproto").write_bytes(array_to_blob(mean).SerializeToString())
    net = Net(net_from_string(PASCAL_SHAPED), phase, seed=2)
    assert net.blob_shapes["data"] == (8, 3, 11, 11) and net.blob_shapes["label"] == (8,)
    out = net.forward()
    assert torch.isfinite(net.loss)
    if phase == "TRAIN":
        net.loss.backward()
        assert net.params["fc8_pascal"][0].grad.abs().sum() > 0
    else:
        assert 0 <= float(out["accuracy"]) <= 1


def test_v1_window_data_upgrades_and_keeps_caffe_scale_quirk(folder, caplog):
    # A V1 WINDOW_DATA layer's crop_size/mirror/scale move to transform_param (Caffe's UpgradeNetDataTransformation);
    # Caffe's WindowData then reads scale from window_data_param only, so the upgraded scale is ignored (warned).
    (folder / "w.txt").write_text(window_text(only("a.png", 3, 0.8, 2, 3, 5, 6)))
    v1 = net_from_string(
        'layers { name: "win" type: WINDOW_DATA top: "data" top: "label" window_data_param { source: "w.txt" '
        "batch_size: 2 fg_fraction: 0.5 crop_size: 4 scale: 0.5 } }"
    )
    assert v1.layer[0].type == "WindowData" and v1.layer[0].transform_param.crop_size == 4
    net = Net(v1, seed=1)
    assert "transform_param.scale is ignored" in caplog.text
    np.testing.assert_array_equal(net.forward()["data"].numpy()[1], IMAGES["a.png"][:, 3:7, 2:6])
