"""Caffe's HDF5 weights layout (.caffemodel.h5): group `data`, one group per layer, dataset `<i>` per blob.

As Caffe's Net::ToHDF5 writes it: every layer gets a group (also those without blobs), and a blob shared with
an earlier layer (same ParamSpec name) is stored only by its owner. Loading (CopyTrainedLayersFromHDF5): a
layer group may hold fewer datasets than the net's layer has blobs only where the missing ones are shared;
shapes must match exactly (no legacy 4-D padding here).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import WeightsError
from pipeline.fileio import temporary_beside


@dataclass
class H5Blob:
    path: str
    dataset: object  # h5py.Dataset

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.dataset.shape)

    def read(self) -> np.ndarray:
        return np.asarray(self.dataset[()], dtype=np.float32)

    def read_into(self, target: torch.Tensor) -> None:
        direct = target.dtype == torch.float32 and target.device.type == "cpu" and target.is_contiguous()
        if direct and self.shape:
            self.dataset.read_direct(target.detach().numpy())
            torch.autograd.graph.increment_version(target)
            return
        array = np.asarray(self.dataset[()], dtype=np.float64 if target.dtype == torch.float64 else np.float32)
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)).view(target.shape))


@dataclass
class H5Layer:
    """One layer group: how many links it holds (Caffe compares that count) and its datasets by index."""

    links: int
    blobs: dict[int, H5Blob] = field(default_factory=dict)


def _check_dataset(path: str, where: str, dataset) -> None:
    kind = getattr(getattr(dataset, "dtype", None), "kind", None)
    if kind not in ("f", "i", "u"):
        raise WeightsError(f"{path}: {where}: not a numeric dataset (HDF5 type {getattr(dataset, 'dtype', '?')})")


@contextmanager
def open_hdf5_layers(path: str | Path):
    """Yields [(layer name, H5Layer)] in the file's (name) order while the file is open."""
    import h5py

    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise WeightsError(f"{path}: cannot read: no such file") from None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not an HDF5 file (or a damaged one): {exc}") from None
    try:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise WeightsError(f"{path}: HDF5 file has no 'data' group: not a Caffe .caffemodel.h5")
        layers = []
        for name in data:
            group = data.get(name)
            if not isinstance(group, h5py.Group):
                raise WeightsError(f"{path}: 'data/{name}' is not a group: not a Caffe .caffemodel.h5")
            layer = H5Layer(links=len(group))
            for key in group:
                if key.isdigit():
                    dataset = group.get(key)
                    if not isinstance(dataset, h5py.Dataset):
                        raise WeightsError(f"{path}: layer '{name}': 'data/{name}/{key}' is not a dataset")
                    _check_dataset(path, f"layer '{name}' blob {key}", dataset)
                    layer.blobs[int(key)] = H5Blob(path, dataset)
            layers.append((name, layer))
        yield layers
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: cannot read HDF5 weights: {exc}") from None
    finally:
        f.close()


def read_hdf5_weights(path: str | Path) -> dict[str, list[np.ndarray | None]]:
    """Every layer's datasets as float32 arrays by index, None where a shared blob is stored by its owner only
    (layers without datasets left out)."""
    result = {}
    with open_hdf5_layers(path) as layers:
        for name, layer in layers:
            if layer.blobs:
                result[name] = [
                    layer.blobs[i].read() if i in layer.blobs else None for i in range(max(layer.blobs) + 1)
                ]
    return result


def write_hdf5(path: str | Path, layers: Iterable[tuple[str, list]]) -> None:
    """Write `layers` = [(name, [array or None (shared, not stored)])] in Caffe's layout, atomically."""
    import h5py

    with temporary_beside(path) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for name, arrays in layers:
            if "/" in name or name in ("", ".", ".."):
                raise WeightsError(
                    f"{path}: layer name '{name}' cannot be an HDF5 group name (Caffe's HDF5 "
                    "snapshot cannot store it either): save a .caffemodel instead"
                )
            group = data.create_group(name)
            for i, array in enumerate(arrays):
                if array is not None:
                    # (np.ascontiguousarray would turn a 0-axis blob into a 1-axis one)
                    group.create_dataset(str(i), data=np.asarray(array, dtype=np.float32, order="C"))
