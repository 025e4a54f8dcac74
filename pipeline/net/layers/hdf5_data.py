"""HDF5Data: batches of rows from the .h5 files named in a list file, as Caffe's HDF5DataLayer reads them.

`source` is a text file of .h5 paths (whitespace separated, like Caffe's `>>` reads them); both it and the paths
in it are relative to the current directory, as in Caffe. Each top reads the dataset of the same name, as
float32; rows are taken in order and wrap to row 0 (or the next file) at the end. With `shuffle` the file order
and the row order of each file are permuted (seeded by the net's generator), and re-permuted at each wrap.
One file is held in memory at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.errors import LayerDataError, layer_data_error
from pipeline.glog import get_logger
from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register


@register("HDF5Data")
class HDF5Data(Layer):
    is_source = True
    has_backward = False
    num_bottoms = (0, 0)
    num_tops = (1, None)

    def data_error(self, message: str) -> LayerDataError:
        return layer_data_error(self, message)

    def setup(self, bottom_shapes):
        p = self.param.hdf5_data_param
        self.check(p.HasField("source") and p.source, "hdf5_data_param.source (the list file of .h5 paths) is not set")
        self.check(p.batch_size > 0, f"hdf5_data_param.batch_size must be positive, got {p.batch_size}")
        self.batch_size, self.shuffle, self.source = p.batch_size, p.shuffle, p.source
        log = get_logger()
        log.info("Loading list of HDF5 filenames from: %s", p.source)
        try:
            self.files = Path(p.source).read_text().split()
        except OSError as exc:
            raise self.data_error(
                f"cannot open source list file '{p.source}' (relative to {Path.cwd()}): {exc.strerror}"
            ) from None
        log.info("Number of HDF5 files: %d", len(self.files))
        if not self.files:
            raise self.data_error(f"source list file '{p.source}' names no HDF5 file")
        self.file_order = self._permutation(len(self.files)) if self.shuffle else np.arange(len(self.files))
        self.current_file = 0
        self._load(self.files[self.file_order[0]])
        self.current_row = 0
        # Tops follow the layer's device and dtype (net.to("cuda"), net.double()), like the other data layers.
        self.register_buffer("target", torch.zeros(0), persistent=False)
        return [(self.batch_size, *array.shape[1:]) for array in self.arrays]

    def dataset_size(self) -> int | None:
        # One file is loaded at a time: the size is known for a single file only.
        return self.arrays[0].shape[0] if len(getattr(self, "files", [])) == 1 else None

    def _permutation(self, n: int) -> np.ndarray:
        return torch.randperm(n, generator=self.generator).numpy()

    def _load(self, path: str) -> None:
        import h5py

        if not Path(path).is_file():
            raise self.data_error(
                f"HDF5 file '{path}' (listed in '{self.source}') not found (relative to {Path.cwd()})"
            )
        arrays = []
        try:
            with h5py.File(path, "r") as f:
                for top in self.top_names:
                    if top not in f or not isinstance(f[top], h5py.Dataset):
                        found = ", ".join(sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))) or "none"
                        raise self.data_error(
                            f"HDF5 file '{path}' has no dataset '{top}' for top '{top}' (datasets: {found})"
                        )
                    dataset = f[top]
                    if dataset.ndim < 1 or dataset.dtype.kind not in "fiub":
                        raise self.data_error(
                            f"HDF5 file '{path}': dataset '{top}' must be a numeric array with "
                            f"at least one axis, got shape {list(dataset.shape)} {dataset.dtype}"
                        )
                    arrays.append(np.ascontiguousarray(dataset[()], dtype=np.float32))
        except OSError as exc:
            raise self.data_error(f"cannot read HDF5 file '{path}': {exc}") from None
        rows = {a.shape[0] for a in arrays}
        if len(rows) != 1:
            sizes = ", ".join(f"{t} {list(a.shape)}" for t, a in zip(self.top_names, arrays))
            raise self.data_error(f"HDF5 file '{path}': all datasets must have the same number of rows ({sizes})")
        if not rows.pop():
            raise self.data_error(f"HDF5 file '{path}' holds no rows")
        if hasattr(self, "arrays"):
            old = [a.shape[1:] for a in self.arrays]
            new = [a.shape[1:] for a in arrays]
            if old != new:
                raise self.data_error(f"HDF5 file '{path}': row shapes {new} differ from the first file's {old}")
        self.arrays = arrays
        self.row_order = self._permutation(arrays[0].shape[0]) if self.shuffle else None
        get_logger().debug("Successfully loaded %d rows from %s", arrays[0].shape[0], path)

    def _wrap(self) -> None:
        """End of the current file: the next file (re-permuting the files after the last), or the same again."""
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.file_order = self._permutation(len(self.files))
            self._load(self.files[self.file_order[self.current_file]])
        elif self.shuffle:
            self.row_order = self._permutation(self.arrays[0].shape[0])
        self.current_row = 0

    def forward(self):
        pieces: list[list[np.ndarray]] = [[] for _ in self.arrays]
        needed = self.batch_size
        while needed:
            if self.current_row == self.arrays[0].shape[0]:
                self._wrap()
            take = min(needed, self.arrays[0].shape[0] - self.current_row)
            rows = slice(self.current_row, self.current_row + take)
            index = self.row_order[rows] if self.row_order is not None else rows
            for piece, array in zip(pieces, self.arrays):
                piece.append(array[index])
            self.current_row += take
            needed -= take
        tops = [torch.from_numpy(np.concatenate(p) if len(p) > 1 else np.array(p[0])) for p in pieces]
        device, dtype = self.target.device, self.target.dtype
        tops = [t.to(device=device, dtype=dtype, non_blocking=True) for t in tops]
        return tuple(tops) if len(tops) > 1 else tops[0]

    def extra_repr(self):
        return f"{super().extra_repr()}, source={self.source!r}, batch_size={self.batch_size}, shuffle={self.shuffle}"
