"""Caffe LMDBs: a directory (data.mdb + lock.mdb) whose values are serialised `Datum` records, read in key order.

A Datum holds raw uint8 pixels (`data`, C*H*W bytes in plane order), or floats (`float_data`), or an encoded image
file (`encoded: true`, `data` = the PNG/JPEG bytes). Readers open the environment read-only without locking, so
databases on read-only storage work; writers build the database in a temporary directory beside the target and
rename it into place, so a reader never sees a half-written database.
"""

from __future__ import annotations

import os
import shutil
import threading
import weakref
from pathlib import Path

import lmdb
import numpy as np
from google.protobuf.message import DecodeError

from pipeline.errors import DataError
from pipeline.glog import get_logger
from pipeline.proto import caffe_pb2

from .images import NATIVE, decode_image


def _leveldb_hint(path: Path) -> str:
    if (path / "CURRENT").is_file() or any(path.glob("*.ldb")):
        return (
            " It looks like a LevelDB, which is not supported: convert it to LMDB (e.g. rebuild it with "
            "tools/convert_imageset.py, or with Caffe's tools and --backend=lmdb)."
        )
    return ""


# One Environment per database file and process (LMDB refuses a second open); readers share it, each with its own
# transaction. Keyed by the data file's identity, so a database rebuilt under the same name opens afresh.
_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _open_shared(path: Path) -> lmdb.Environment:
    data = path / "data.mdb" if path.is_dir() else path
    info = data.stat()
    key = (str(data.resolve()), info.st_dev, info.st_ino)
    with _SHARED_LOCK:
        env = _SHARED.get(key)
        if env is None:
            env = lmdb.open(str(path), readonly=True, lock=False, subdir=path.is_dir())
            _SHARED[key] = env
        return env


class LmdbReader:
    """Records of one LMDB, in cursor (key) order, wrapping to the first record after the last."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            where = "" if self.path.is_absolute() else f" (relative to {Path.cwd()})"
            raise DataError(f"LMDB '{path}' does not exist{where}")
        if self.path.is_dir() and not (self.path / "data.mdb").is_file():
            raise DataError(f"'{path}' is not an LMDB (no data.mdb in it).{_leveldb_hint(self.path)}")
        try:
            self.env = _open_shared(self.path)
            self.entries = self.env.stat()["entries"]
        except (lmdb.Error, OSError) as exc:
            raise DataError(f"cannot open LMDB '{path}': {exc}") from None
        if not self.entries:
            raise DataError(f"LMDB '{path}' is empty")
        self._txn = self._cursor = None
        self.wraps = 0

    def first(self) -> tuple[bytes, bytes]:
        try:
            with self.env.begin() as txn:
                cursor = txn.cursor()
                cursor.first()
                return cursor.key(), cursor.value()
        except lmdb.Error as exc:
            raise DataError(f"cannot read LMDB '{self.path}': {exc}") from None

    def _next(self) -> tuple[bytes, bytes]:
        if self._cursor is None:
            # Created by the thread that reads (the prefetch thread), and kept for the reader's life.
            self._txn = self.env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            self._cursor.first()
        record = self._cursor.item()
        if not self._cursor.next():
            self.wraps += 1
            get_logger().info("Restarting data prefetching from start.")
            self._cursor.first()
        return record

    def read(self, count: int) -> list[tuple[bytes, bytes]]:
        """The next `count` (key, value) records."""
        try:
            return [self._next() for _ in range(count)]
        except lmdb.Error as exc:
            raise DataError(f"cannot read LMDB '{self.path}': {exc}") from None

    def close(self) -> None:
        """End this reader's transaction; the shared environment closes when its last reader is gone."""
        if self._txn is not None:
            self._txn.abort()
        self._txn = self._cursor = None


def parse_datum(value: bytes, key: bytes, path) -> caffe_pb2.Datum:
    try:
        return caffe_pb2.Datum.FromString(value)
    except DecodeError as exc:
        raise DataError(f"corrupt record {_key(key)} in LMDB '{path}': not a serialised Datum ({exc})") from None


def datum_array(datum: caffe_pb2.Datum, key: bytes = b"?", path="?", mode: str = NATIVE) -> np.ndarray:
    """A Datum's pixels as planes (C, H, W): uint8 for raw or encoded data, float32 for float_data."""
    if datum.encoded:
        return decode_image(datum.data, mode, what=f"record {_key(key)} in LMDB '{path}'")
    shape = (datum.channels, datum.height, datum.width)
    size = shape[0] * shape[1] * shape[2]
    if min(shape) <= 0:
        raise DataError(f"corrupt record {_key(key)} in LMDB '{path}': shape {list(shape)} is empty")
    if datum.data:
        if len(datum.data) != size:
            raise DataError(
                f"corrupt record {_key(key)} in LMDB '{path}': {len(datum.data)} data bytes for a "
                f"{_dims(shape)} image ({size} expected)"
            )
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != size:
        raise DataError(
            f"corrupt record {_key(key)} in LMDB '{path}': {len(datum.float_data)} float_data values "
            f"for a {'x'.join(map(str, shape))} image ({size} expected)"
        )
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def _key(key: bytes) -> str:
    return repr(key.decode("utf-8", "replace"))


def make_datum(planes: np.ndarray, label: int) -> bytes:
    """A serialised Datum of planes (C, H, W): uint8 go to `data`, anything else to `float_data`."""
    channels, height, width = planes.shape
    datum = caffe_pb2.Datum(channels=channels, height=height, width=width, label=int(label))
    if planes.dtype == np.uint8:
        datum.data = np.ascontiguousarray(planes).tobytes()
    else:
        datum.float_data.extend(np.asarray(planes, dtype=np.float32).ravel().tolist())
    return datum.SerializeToString()


def make_encoded_datum(data: bytes, label: int) -> bytes:
    """Caffe's ReadFileToDatum: the file bytes as they are, `encoded: true` (no shape)."""
    return caffe_pb2.Datum(data=data, label=int(label), encoded=True).SerializeToString()


class DatumBatches:
    """DataLayer's load_batch: the next `batch_size` records, decoded, transformed, with their labels."""

    def __init__(self, reader: LmdbReader, transformer, batch_size: int, labels: bool = True):
        self.reader, self.transformer = reader, transformer
        self.batch_size, self.labels = batch_size, labels
        self.mode = transformer.decode_mode

    def __call__(self) -> tuple[np.ndarray, ...]:
        images, labels = [], []
        for key, value in self.reader.read(self.batch_size):
            datum = parse_datum(value, key, self.reader.path)
            planes = datum_array(datum, key, self.reader.path, self.mode)
            if images and planes.shape != images[0].shape and not self.transformer.crop_size:
                raise DataError(
                    f"record {_key(key)} in LMDB '{self.reader.path}' is {_dims(planes.shape)} but "
                    f"this batch began with {_dims(images[0].shape)} (only crop_size allows that)"
                )
            images.append(planes)
            labels.append(datum.label)
        data = self.transformer(images)
        return (data, np.asarray(labels, dtype=np.float32)) if self.labels else (data,)


class LmdbWriter:
    """Writes an LMDB atomically: records go to `.<name>.partial-<pid>` beside `path`, renamed over it at the end.

    Use as a context manager; `put` records in the order they should be read (keys sort as strings). An exception
    inside the block removes the partial database and leaves any previous one in place.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, commit_every: int = 1000):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise DataError(f"'{path}' already exists: remove it first (or overwrite)")
        self.partial = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.commit_every, self.count = commit_every, 0
        self._pending: list[tuple[bytes, bytes]] = []
        self.map_size = 64 << 20

    def __enter__(self) -> LmdbWriter:
        shutil.rmtree(self.partial, ignore_errors=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(self.partial), map_size=self.map_size, subdir=True)
        except (OSError, lmdb.Error) as exc:
            raise DataError(f"cannot create LMDB '{self.path}': {exc}") from None
        return self

    def put(self, key: str | bytes, value: bytes) -> None:
        self._pending.append((key.encode() if isinstance(key, str) else key, value))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self._commit()

    def _commit(self) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
        self._pending.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
                self.env.sync()
        finally:
            self.env.close()
        if exc_type is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
            return
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            os.rename(self.path, old)
        os.rename(self.partial, self.path)
        shutil.rmtree(old, ignore_errors=True)
