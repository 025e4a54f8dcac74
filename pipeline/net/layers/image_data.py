"""ImageData: images listed in a "path label" text file, decoded, resized, transformed, prefetched.

Paths are `root_folder` + the listed path. Images decode in colour (BGR, as OpenCV) or grey (`is_color: false`),
are resized to new_height x new_width when both are set, and the list is shuffled at set-up and after every epoch
when `shuffle` is true (with a generator seeded from the net's). The top shape comes from the first image.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.images import ImageBatches, read_list_file
from pipeline.data.transform import DataTransformer, transform_param_of
from pipeline.glog import get_logger
from pipeline.net.layers.base_data import PrefetchingDataLayer
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2


@register("ImageData")
class ImageData(PrefetchingDataLayer):
    num_tops = (2, 2)

    def open_source(self):
        param = self.param.image_data_param
        height, width = param.new_height, param.new_width
        self.check(param.batch_size > 0, "image_data_param.batch_size must be positive")
        self.check(bool(param.source), "image_data_param.source is not set")
        self.check((height == 0) == (width == 0), f"new_height ({height}) and new_width ({width}) must be set together")
        transform = transform_param_of(self.param, param)
        needs_rand = transform.mirror or (self.phase == caffe_pb2.TRAIN and transform.crop_size > 0)
        transformer = DataTransformer(transform, self.phase, self.draw_seed() if needs_rand else None)
        lines = read_list_file(param.source)
        get_logger().info("Opening file %s", param.source)
        get_logger().info("A total of %d images.", len(lines))
        rng = np.random.default_rng(self.draw_seed()) if param.shuffle or param.rand_skip else None
        skip = int(rng.integers(param.rand_skip)) if param.rand_skip else 0
        batches = ImageBatches(
            lines,
            param.root_folder,
            height,
            width,
            param.is_color,
            param.batch_size,
            transformer,
            shuffle=param.shuffle,
            rng=rng,
            skip=skip,
        )
        first = batches.image(batches.position)
        shape = (param.batch_size, *transformer.output_shape(first.shape))
        get_logger().info("output data size: %s", ",".join(map(str, shape)))
        return [shape, (param.batch_size,)], batches
