"""Tiny nets, data and solvers for the solver tests: HDF5 data -> InnerProduct -> EuclideanLoss."""

from __future__ import annotations

import contextlib
from pathlib import Path

import h5py
import numpy as np
from google.protobuf import text_format

from pipeline.glog import get_logger
from pipeline.proto import caffe_pb2
from pipeline.solvers import build_solver
from pipeline.text.prototxt import parse_text

ROWS, BATCH = 12, 4  # 3 batches per epoch


def write_data(folder: Path, rows: int = ROWS, seed: int = 0, name: str = "train", nan_row: int | None = None) -> Path:
    rng = np.random.RandomState(seed)
    x = rng.uniform(-1, 1, (rows, 3)).astype(np.float32)
    y = (x @ np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], np.float32) + 0.1).astype(np.float32)
    if nan_row is not None:
        x[nan_row, 0] = np.nan
    h5 = folder / f"{name}.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = x
        f["label"] = y
    listing = folder / f"{name}.txt"
    listing.write_text(f"{h5.name}\n")
    return listing


def net_text(batch: int = BATCH, train: str = "train.txt", test: str = "test.txt", extra: str = "") -> str:
    return f"""
name: "tiny"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "{train}" batch_size: {batch} }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
  hdf5_data_param {{ source: "{test}" batch_size: {batch} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.5 }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }}
{extra}
"""


def solver_param(text: str = "", net: str | None = None, **fields) -> caffe_pb2.SolverParameter:
    """A solver for the tiny net (net_param inline); `text` and `fields` override the defaults."""
    base = f"""
        net_param {{ {net if net is not None else net_text()} }}
        base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.001
        max_iter: 6 display: 1 test_iter: 3 test_interval: 3
        snapshot_prefix: "snap/tiny" solver_mode: CPU random_seed: 1701
    """
    param = parse_text(base, caffe_pb2.SolverParameter())
    text_format.Merge(text, param)  # later scalar fields win
    for key, value in fields.items():
        if isinstance(value, (list, tuple)):
            getattr(param, key)[:] = value
        else:
            setattr(param, key, value)
    return param


def tiny_folder(tmp_path: Path, monkeypatch) -> Path:
    """tmp_path as the current directory, with train/test data and a `snap/` folder."""
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path, seed=0, name="train")
    write_data(tmp_path, seed=1, name="test")
    (tmp_path / "snap").mkdir()
    return tmp_path


def make(param: caffe_pb2.SolverParameter, **kwargs):
    kwargs.setdefault("progress", False)
    return build_solver(param, **kwargs)


def weights(solver) -> list[np.ndarray]:
    return [p.tensor.detach().cpu().numpy().copy() for p in solver.net.learnable_params]


@contextlib.contextmanager
def kept_logger():
    """Undo what setup_logging does to the "pipeline" logger (handlers, level, propagation) afterwards."""
    log = get_logger()
    saved = (list(log.handlers), log.level, log.propagate)
    try:
        yield log
    finally:
        for handler in list(log.handlers):
            if handler not in saved[0]:
                log.removeHandler(handler)
                handler.close()
        log.handlers[:] = saved[0]
        log.setLevel(saved[1])
        log.propagate = saved[2]
