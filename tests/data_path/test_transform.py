"""DataTransformer against Caffe's loops: scale, mean file, mean values, crops (random/centre), mirror."""

import itertools

import numpy as np
import pytest

from pipeline.data.transform import DataTransformer, load_mean_file, transform_param_of
from pipeline.errors import DataError
from pipeline.proto import caffe_pb2

from .helpers import caffe_transform

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
RNG = np.random.default_rng(7)
IMAGES = RNG.integers(0, 256, (6, 3, 7, 9), dtype=np.uint8)
MEAN = RNG.uniform(0, 255, (3, 7, 9)).astype(np.float32)


def param(**fields) -> caffe_pb2.TransformationParameter:
    p = caffe_pb2.TransformationParameter()
    for key, value in fields.items():
        if key == "mean_value":
            p.mean_value.extend(value)
        else:
            setattr(p, key, value)
    return p


@pytest.fixture
def mean_file(tmp_path):
    path = tmp_path / "mean.binaryproto"
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=7, width=9)
    blob.data.extend(MEAN.ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return str(path)


MEANS = ["none", "file", "one_value", "per_channel"]


def mean_kwargs(kind, mean_file):
    return {
        "none": ({}, {}),
        "file": ({"mean_file": mean_file}, {"mean": MEAN}),
        "one_value": ({"mean_value": [100.5]}, {"mean_values": [100.5]}),
        "per_channel": ({"mean_value": [10, 120.25, 250]}, {"mean_values": [10, 120.25, 250]}),
    }[kind]


@pytest.mark.parametrize("scale, mean", list(itertools.product([1.0, 0.00390625, 0.017], MEANS)))
def test_no_crop_matches_caffe_loops(scale, mean, mean_file):
    fields, ref = mean_kwargs(mean, mean_file)
    out = DataTransformer(param(scale=scale, **fields), TRAIN, seed=0)(IMAGES)
    expected = np.stack([caffe_transform(x, scale=scale, **ref) for x in IMAGES])
    assert out.dtype == np.float32 and out.shape == IMAGES.shape
    np.testing.assert_array_equal(out, expected)


def test_subtract_then_scale():
    # (x - mean) * scale, not x * scale - mean
    out = DataTransformer(param(scale=0.5, mean_value=[10]), TEST)(np.full((1, 1, 2, 2), 30, np.uint8))
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), 10.0, np.float32))


@pytest.mark.parametrize("mean, mirror", list(itertools.product(MEANS, [False, True])))
def test_test_phase_centre_crop(mean, mirror, mean_file):
    fields, ref = mean_kwargs(mean, mean_file)
    transformer = DataTransformer(param(crop_size=4, scale=0.25, mirror=mirror, **fields), TEST, seed=3)
    out = transformer(IMAGES)
    assert out.shape == (6, 3, 4, 4)
    h_off, w_off = (7 - 4) // 2, (9 - 4) // 2
    for x, y in zip(IMAGES, out):
        candidates = [
            caffe_transform(x, 0.25, crop=4, h_off=h_off, w_off=w_off, mirror=m, **ref)
            for m in ([False, True] if mirror else [False])
        ]
        assert any(np.array_equal(y, c) for c in candidates)


@pytest.mark.parametrize("mean, mirror", list(itertools.product(MEANS, [False, True])))
def test_train_phase_random_crop(mean, mirror, mean_file):
    fields, ref = mean_kwargs(mean, mean_file)
    transformer = DataTransformer(param(crop_size=5, mirror=mirror, **fields), TRAIN, seed=11)
    seen = set()
    for _ in range(8):
        out = transformer(IMAGES)
        for x, y in zip(IMAGES, out):
            matches = [
                (h, w, m)
                for h, w, m in itertools.product(range(3), range(5), [False, True][: 1 + mirror])
                if np.array_equal(y, caffe_transform(x, crop=5, h_off=h, w_off=w, mirror=m, **ref))
            ]
            assert matches, "output is no crop of its input"
            seen.update(matches)
    assert len({(h, w) for h, w, _ in seen}) > 5
    assert {m for _, _, m in seen} == ({False, True} if mirror else {False})


def test_mirror_without_crop_flips_some_items():
    out = DataTransformer(param(mirror=True), TRAIN, seed=5)(np.repeat(IMAGES[:1], 32, axis=0))
    flipped = [np.array_equal(y, IMAGES[0, :, :, ::-1].astype(np.float32)) for y in out]
    kept = [np.array_equal(y, IMAGES[0].astype(np.float32)) for y in out]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_seeded_generator_is_reproducible():
    p = param(crop_size=3, mirror=True)
    a = DataTransformer(p, TRAIN, seed=42)(IMAGES)
    b = DataTransformer(p, TRAIN, seed=42)(IMAGES)
    c = DataTransformer(p, TRAIN, seed=43)(IMAGES)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_float_data_and_items_of_different_sizes():
    floats = RNG.normal(size=(2, 3, 7, 9)).astype(np.float32)
    out = DataTransformer(param(scale=2.0, mean_value=[0.5]), TEST)(floats)
    np.testing.assert_array_equal(out, (floats - np.float32(0.5)) * np.float32(2.0))
    # with crop_size, items may differ in size (Caffe reshapes by the first one)
    items = [IMAGES[0], IMAGES[1, :, :6, :8]]
    out = DataTransformer(param(crop_size=4), TEST)(items)
    np.testing.assert_array_equal(out[1], caffe_transform(items[1], crop=4, h_off=1, w_off=2))


def test_output_shape_and_legacy_fields():
    assert DataTransformer(param(crop_size=4), TEST).output_shape((3, 7, 9)) == (3, 4, 4)
    layer = caffe_pb2.LayerParameter(type="Data")
    layer.data_param.scale = 0.5
    layer.data_param.crop_size = 3
    layer.transform_param.scale = 2.0  # the new field wins over the deprecated copy
    merged = transform_param_of(layer, layer.data_param)
    assert (merged.scale, merged.crop_size) == (2.0, 3)


@pytest.mark.parametrize(
    "fields, shape, message",
    [
        ({"mean_value": [1.0], "mean_file": "m"}, None, "mean_file and mean_value"),
        ({"force_color": True, "force_gray": True}, None, "force_color and force_gray"),
        ({"crop_size": 8}, (3, 7, 9), "crop_size 8 is larger"),
        ({"mean_value": [1.0, 2.0]}, (3, 7, 9), "either 1 mean_value or as many as channels"),
        ({"mean_file": "MEAN"}, (3, 8, 9), "mean_file"),
    ],
)
def test_bad_parameters(fields, shape, message, mean_file):
    if fields.get("mean_file") == "MEAN":
        fields["mean_file"] = mean_file
    with pytest.raises(DataError, match=message):
        DataTransformer(param(**fields), TRAIN).output_shape(shape)


def test_bad_mean_files(tmp_path):
    with pytest.raises(DataError, match="cannot read mean_file .*missing.binaryproto"):
        load_mean_file(tmp_path / "missing.binaryproto")
    (tmp_path / "junk").write_bytes(b"\xff\xff\xff")
    with pytest.raises(DataError, match="not a valid BlobProto"):
        load_mean_file(tmp_path / "junk")
