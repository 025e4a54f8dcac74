"""Data: batches of Datum records from an LMDB, transformed by transform_param, prefetched in the background.

Tops: data (batch_size, C, H, W) and, if named, label (batch_size,), both float32. Records are read in key order
and the reader wraps to the first record at the end ("Restarting data prefetching from start."). The top shape
comes from the first record, as in Caffe. `rand_skip` skips a random number (below it) of records at the start.
"""

from __future__ import annotations

from pipeline.data.lmdb_source import DatumBatches, LmdbReader, datum_array, parse_datum
from pipeline.data.transform import DataTransformer, transform_param_of
from pipeline.errors import DataError
from pipeline.glog import get_logger
from pipeline.net.layers.base_data import PrefetchingDataLayer
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2


@register("Data")
class Data(PrefetchingDataLayer):
    num_tops = (1, 2)

    def dataset_size(self) -> int | None:
        reader = LmdbReader(self.param.data_param.source)
        try:
            return reader.entries
        finally:
            reader.close()

    def open_source(self):
        param = self.param.data_param
        self.check(param.batch_size > 0, "data_param.batch_size must be positive")
        self.check(bool(param.source), "data_param.source is not set")
        if param.HasField("backend") and param.backend == caffe_pb2.DataParameter.LEVELDB:
            raise DataError(
                f"backend LEVELDB is not supported (source '{param.source}'): convert the database to "
                "LMDB (e.g. rebuild it with tools/convert_imageset.py) and set `backend: LMDB`"
            )
        # Caffe's default backend is LEVELDB; an unset backend is read as LMDB (the only one we support).
        transform = transform_param_of(self.param, param)
        if param.force_encoded_color and not transform.HasField("force_color"):
            transform.force_color = True
        needs_rand = transform.mirror or (self.phase == caffe_pb2.TRAIN and transform.crop_size > 0)
        transformer = DataTransformer(transform, self.phase, self.draw_seed() if needs_rand else None)
        reader = LmdbReader(param.source)
        get_logger().info("Opened lmdb %s", param.source)
        key, value = reader.first()
        datum = parse_datum(value, key, param.source)
        first = datum_array(datum, key, param.source, transformer.decode_mode)
        if (transform.force_color or transform.force_gray) and not datum.encoded:
            get_logger().warning("%s: force_color and force_gray only apply to encoded records", self.name)
        shape = (param.batch_size, *transformer.output_shape(first.shape))
        get_logger().info("output data size: %s", ",".join(map(str, shape)))
        if param.rand_skip:
            skip = int(self.draw_seed()) % param.rand_skip
            get_logger().info("Skipping first %d data points.", skip)
            reader.read(skip)
        labels = len(self.top_names) > 1
        batches = DatumBatches(reader, transformer, param.batch_size, labels)
        return [shape, (param.batch_size,)] if labels else [shape], batches
