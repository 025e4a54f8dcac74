"""Bad data input: each failure is a clear DataError naming the layer and the path (never a traceback)."""

import lmdb
import pytest

from pipeline.data.errors import LayerDataError
from pipeline.data.lmdb_source import LmdbWriter, make_datum
from pipeline.errors import DataError, NetBuildError
from pipeline.proto import caffe_pb2

from .helpers import data_layer, data_net, make_db, random_images


def build(source, **kw):
    return data_net(data_layer(source, 2, **kw))


def test_missing_lmdb_names_layer_and_path(tmp_path):
    missing = tmp_path / "no_such_lmdb"
    with pytest.raises(LayerDataError) as info:
        build(missing)
    assert isinstance(info.value, DataError) and isinstance(info.value, NetBuildError)
    assert "layer 'mnist' (Data)" in str(info.value) and str(missing) in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ({}, "not an LMDB \\(no data.mdb"),
        ({"data.mdb": b"this is not an lmdb" * 100}, "cannot open LMDB"),
        ({"CURRENT": b"MANIFEST-000001\n", "000003.ldb": b""}, "LevelDB, which is not supported"),
    ],
)
def test_unreadable_lmdb(tmp_path, content, message):
    folder = tmp_path / "db"
    folder.mkdir()
    for name, data in content.items():
        (folder / name).write_bytes(data)
    with pytest.raises(LayerDataError, match=f"layer 'mnist' \\(Data\\): .*{message}"):
        build(folder)


def test_leveldb_backend_and_empty_lmdb(tmp_path):
    make_db(tmp_path / "db")
    with pytest.raises(DataError, match="layer 'mnist' .*LEVELDB is not supported.*convert"):
        data_net(data_layer(tmp_path / "db", 2).replace("backend: LMDB", "backend: LEVELDB"))
    with lmdb.open(str(tmp_path / "empty")):
        pass
    with pytest.raises(DataError, match="is empty"):
        build(tmp_path / "empty")


def test_corrupt_first_record_fails_at_setup(tmp_path):
    with LmdbWriter(tmp_path / "db") as db:
        db.put("00000000", b"\xff\xff\xff\xff garbage")
    with pytest.raises(LayerDataError, match="layer 'mnist' .*corrupt record '00000000' in LMDB .*not a serialised"):
        build(tmp_path / "db")


@pytest.mark.parametrize(
    "bad_value, message",
    [
        (b"\x0a\x05garbage-that-is-not-protobuf", "not a serialised Datum"),
        (caffe_pb2.Datum(channels=1, height=6, width=5, data=b"x" * 25).SerializeToString(), "25 data bytes"),
        (make_datum(random_images(1, (1, 5, 5))[0][0], 1), "is 1x5x5 but this batch began with 1x6x5"),
    ],
)
def test_corrupt_later_record_fails_at_forward(tmp_path, bad_value, message):
    images, labels = random_images(4)
    with LmdbWriter(tmp_path / "db") as db:
        for i in range(3):
            db.put(f"{i:08d}", make_datum(images[i], labels[i]))
        db.put("00000003", bad_value)
    net = build(tmp_path / "db")
    net.forward()
    with pytest.raises(LayerDataError, match=f"layer 'mnist' \\(Data\\): .*'00000003' in LMDB .*{message}"):
        net.forward()


def test_missing_mean_file_and_bad_encoded_record(tmp_path):
    make_db(tmp_path / "db")
    with pytest.raises(LayerDataError, match="layer 'mnist' .*cannot read mean_file .*nope.binaryproto"):
        build(tmp_path / "db", transform=f'mean_file: "{tmp_path / "nope.binaryproto"}"')
    with LmdbWriter(tmp_path / "enc") as db:
        from pipeline.data.lmdb_source import make_encoded_datum

        db.put("0", make_encoded_datum(b"not a png", 0))
    with pytest.raises(LayerDataError, match="record '0' in LMDB .*cannot decode the image"):
        build(tmp_path / "enc")


def test_image_data_errors(tmp_path):
    def image_net(source, root=""):
        return data_net(
            f'layer {{ name: "imgs" type: "ImageData" top: "data" top: "label" image_data_param {{ '
            f'source: "{source}" root_folder: "{root}" batch_size: 1 }} }}'
        )

    with pytest.raises(LayerDataError, match="layer 'imgs' \\(ImageData\\): cannot open the image list .*nope.txt"):
        image_net(tmp_path / "nope.txt")
    (tmp_path / "list.txt").write_text("a.png 0\n")
    with pytest.raises(LayerDataError, match="layer 'imgs' .*could not open or find the image .*a.png"):
        image_net(tmp_path / "list.txt", root=f"{tmp_path}/")
    (tmp_path / "bad.txt").write_text("a.png zero\n")
    with pytest.raises(LayerDataError, match="bad.txt:1: expected 'path label'"):
        image_net(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(LayerDataError, match="is empty"):
        image_net(tmp_path / "empty.txt")


def test_writer_refuses_to_overwrite_and_cleans_up(tmp_path):
    make_db(tmp_path / "db")
    with pytest.raises(DataError, match="already exists"):
        LmdbWriter(tmp_path / "db")
    with pytest.raises(RuntimeError), LmdbWriter(tmp_path / "db", overwrite=True) as db:
        db.put("0", b"x")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]  # the partial database is gone, the old kept
    build(tmp_path / "db")
