"""HDF5Output: writes its two bottoms to `hdf5_output_param.file_name` as the datasets "data" and "label".

As Caffe's HDF5OutputLayer: exactly two bottoms (data, label) with the same number of items, no tops, no backward.
Each bottom is written in Caffe's legacy 4-D shape (num, channels, height, width; missing axes are 1, so a label of
shape (N,) is stored as (N, 1, 1, 1)); bottoms of more than 4 axes are an error, as Caffe's legacy accessors are.
Values are float32 (float64 when the net runs in double, as Caffe<double> writes).

Caffe creates (truncates) the file at set-up and, at every forward, makes the two datasets in it: the first forward
writes its batch, and the second fails because the datasets exist (HDF5 "unable to create dataset"; BVLC/caffe#1726),
which aborts Caffe. We do the same with a clear error instead of an abort: one net writes one batch. Differences:
set-up only checks that the file can be created (its folder exists and is writable) and writes nothing, and the
forward writes the file whole, to a temporary file renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.data.errors import layer_data_error
from pipeline.fileio import temporary_beside
from pipeline.glog import get_logger
from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register

#: Caffe's HDF5_DATA_DATASET_NAME and HDF5_DATA_LABEL_NAME.
DATA_DATASET, LABEL_DATASET = "data", "label"


def legacy_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Caffe's (num(), channels(), height(), width()) of a blob of at most 4 axes."""
    return tuple(shape[i] if i < len(shape) else 1 for i in range(4))


@register("HDF5Output")
class HDF5Output(Layer):
    not_exportable = "writes files"
    in_deploy = False
    has_backward = False
    num_bottoms = (2, 2)
    num_tops = (0, 0)

    def setup(self, bottom_shapes):
        self.file_name = self.param.hdf5_output_param.file_name
        self.check(bool(self.file_name), "hdf5_output_param.file_name is not set")
        self._check_shapes([tuple(s) for s in bottom_shapes])
        folder = Path(self.file_name).parent
        if not folder.is_dir():
            raise layer_data_error(
                self, f"cannot create HDF5 file '{self.file_name}': folder '{folder}' does not exist"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise layer_data_error(
                self, f"cannot create HDF5 file '{self.file_name}': folder '{folder}' is not writable"
            )
        if Path(self.file_name).is_dir():
            raise layer_data_error(self, f"cannot create HDF5 file '{self.file_name}': it is a folder")
        self.saved = False
        return []

    def _check_shapes(self, shapes: list[tuple[int, ...]]) -> None:
        for name, shape in zip(self.bottom_names, shapes):
            self.check(
                len(shape) <= 4,
                f"bottom '{name}' has {len(shape)} axes {list(shape)}; HDF5Output writes blobs of at most 4 axes "
                "(Caffe's num, channels, height, width)",
            )
        data, label = (legacy_shape(s) for s in shapes)
        self.check(
            data[0] == label[0],
            f"data blob '{self.bottom_names[0]}' {list(shapes[0])} and label blob '{self.bottom_names[1]}' "
            f"{list(shapes[1])} must have the same batch size",
        )

    def forward(self, data, label):
        self._check_shapes([tuple(data.shape), tuple(label.shape)])
        if self.saved:
            raise layer_data_error(
                self,
                f"HDF5 file '{self.file_name}' already holds this net's first batch: Caffe's HDF5Output writes "
                f"datasets '{DATA_DATASET}' and '{LABEL_DATASET}' once per net, and its next forward fails "
                "(the datasets exist). Run one forward per net, or collect outputs from net.blobs instead",
            )
        arrays = []
        for blob in (data, label):
            array = blob.detach().cpu().numpy()
            dtype = np.float64 if array.dtype == np.float64 else np.float32
            arrays.append(np.ascontiguousarray(array, dtype=dtype).reshape(legacy_shape(array.shape)))
        log = get_logger()
        log.info("Saving HDF5 file %s", self.file_name)
        self._write(*arrays)
        self.saved = True
        log.info("Successfully saved %d rows", arrays[0].shape[0])
        return ()

    def _write(self, data: np.ndarray, label: np.ndarray) -> None:
        import h5py

        try:
            with temporary_beside(self.file_name) as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset(DATA_DATASET, data=data)
                f.create_dataset(LABEL_DATASET, data=label)
        except OSError as exc:
            raise layer_data_error(self, f"cannot write HDF5 file '{self.file_name}': {exc}") from None

    def extra_repr(self):
        return f"{super().extra_repr()}, file_name={self.file_name!r}"
