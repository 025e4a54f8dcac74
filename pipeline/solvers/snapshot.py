"""Snapshots in Caffe's two formats, written atomically (a temporary file, then a rename).

BINARYPROTO: `<prefix>_iter_N.caffemodel` (NetParameter) + `<prefix>_iter_N.solverstate` (SolverState).
HDF5: `<prefix>_iter_N.caffemodel.h5` (Net::ToHDF5: group `data`, one group per layer, datasets "0", "1", ...)
+ `<prefix>_iter_N.solverstate.h5` (datasets `iter`, `learned_net`, `current_step`, group `history`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from pipeline.errors import SolverError, WeightsError
from pipeline.fileio import temporary_beside
from pipeline.proto import caffe_pb2
from pipeline.weights.blobs import array_to_blob, blob_to_array
from pipeline.weights.io import atomic_write, save_caffemodel, save_caffemodel_h5


@dataclass
class SolverStateData:
    iter: int
    current_step: int
    learned_net: str | None
    history: list[np.ndarray]


def check_writable(prefix: str) -> None:
    """Caffe's CheckSnapshotWritePermissions: probe `<prefix>_iter_N.tempfile` before any training."""
    probe = Path(f"{prefix}.tempfile")
    folder = probe.parent
    if not folder.is_dir():
        raise SolverError(f"cannot write snapshots with prefix '{prefix}': directory '{folder}' does not exist")
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as exc:
        raise SolverError(
            f"cannot write snapshots with prefix '{prefix}': {exc.strerror} ({folder}); make sure "
            "the directory exists and is writable"
        ) from None


def _atomic_h5(path: str | Path, fill) -> None:
    import h5py

    with temporary_beside(path) as tmp:
        with h5py.File(tmp, "w") as f:
            fill(f)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def write_caffemodel(net, path: str | Path) -> None:
    save_caffemodel(net, path)


def write_caffemodel_h5(net, path: str | Path) -> None:
    """Net::ToHDF5: group `data`, one group per layer (Split layers too), datasets "0", "1", ..."""
    save_caffemodel_h5(net, path)


def write_solverstate(path: str | Path, state: SolverStateData) -> None:
    proto = caffe_pb2.SolverState(iter=state.iter, current_step=state.current_step)
    if state.learned_net is not None:
        proto.learned_net = state.learned_net
    for array in state.history:
        array_to_blob(array, proto.history.add())
    atomic_write(path, proto.SerializeToString())


def write_solverstate_h5(path: str | Path, state: SolverStateData) -> None:
    import h5py

    def fill(f):
        f.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
        if state.learned_net is not None:
            # H5LTmake_dataset_string: a scalar, NUL-terminated fixed-length string.
            raw = state.learned_net.encode()
            tid = h5py.h5t.C_S1.copy()
            tid.set_size(len(raw) + 1)
            tid.set_strpad(h5py.h5t.STR_NULLTERM)
            space = h5py.h5s.create(h5py.h5s.SCALAR)
            dset = h5py.h5d.create(f.id, b"learned_net", tid, space)
            dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw + b"\0", dtype=f"S{len(raw) + 1}"), mtype=tid)
        f.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
        history = f.create_group("history")
        for i, array in enumerate(state.history):
            history.create_dataset(str(i), data=array)

    _atomic_h5(path, fill)


def read_solverstate(path: str | Path) -> SolverStateData:
    """Either format, chosen like Caffe's Solver::Restore: by the `.h5` ending."""
    path = Path(path)
    if not path.exists():
        raise SolverError(f"{path}: solver state file not found")
    if path.name.endswith(".h5"):
        return _read_solverstate_h5(path)
    proto = caffe_pb2.SolverState()
    try:
        proto.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise SolverError(f"{path}: not a valid .solverstate (binary SolverState): {exc}") from None
    try:
        history = [blob_to_array(b) for b in proto.history]
    except ValueError as exc:
        raise SolverError(f"{path}: corrupt history blob: {exc}") from None
    learned = proto.learned_net if proto.HasField("learned_net") else None
    return SolverStateData(proto.iter, proto.current_step, learned, history)


def _read_solverstate_h5(path: Path) -> SolverStateData:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for name in ("iter", "current_step", "history"):
                if name not in f:
                    raise SolverError(f"{path}: not a Caffe .solverstate.h5: no '{name}' entry")
            learned = None
            if "learned_net" in f:
                raw = f["learned_net"][()]
                learned = (raw.decode() if isinstance(raw, bytes) else str(raw)).rstrip("\0")
            group = f["history"]
            history = [np.asarray(group[k], dtype=np.float32) for k in sorted(group.keys(), key=int)]
            return SolverStateData(
                int(np.asarray(f["iter"]).ravel()[0]), int(np.asarray(f["current_step"]).ravel()[0]), learned, history
            )
    except OSError as exc:
        raise SolverError(f"{path}: cannot read HDF5 solver state: {exc}") from None


def find_learned_net(learned: str, state_path: str | Path) -> Path:
    """Caffe opens learned_net relative to the current directory; we also look beside the state file."""
    candidate = Path(learned)
    if candidate.exists():
        return candidate
    beside = Path(state_path).parent / candidate.name
    if beside.exists():
        return beside
    raise WeightsError(
        f"{state_path}: its weights file '{learned}' (learned_net) was found neither in "
        f"{os.getcwd()} nor beside the state file"
    )
