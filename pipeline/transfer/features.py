"""Features off the shelf (Caffe's extract_features, Razavian 2014 / DeCAF): any blob for a dataset, saved, classified.

A net is run forward in TEST phase over a dataset (its data layers: those of the TRAIN phase, to get features of
the training set, or of TEST), batch by batch, and the chosen blobs (their final values, after in-place layers) are
kept: written to NumPy (.npy per blob, or one .npz), HDF5 (one dataset per blob) or LMDB (one database per blob,
a Datum with float_data per item, keyed by a 10-digit index as Caffe's tool does), labels beside them. A
scikit-learn classifier (linear SVM, logistic regression, random forest) trained on the features gives the
off-the-shelf baseline.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import DataError, NetBuildError
from pipeline.net import Net
from pipeline.net.layers.registry import layer_class
from pipeline.proto import caffe_pb2
from pipeline.text.netspec import net_state, state_meets_rule
from pipeline.transfer.netedit import TransferError, suggest

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}
FORMATS = ("npy", "npz", "hdf5", "lmdb")
CLASSIFIERS = ("linear_svm", "logreg", "rf")


# ----- the net ---------------------------------------------------------------------------------------------------
def _is_source(layer: caffe_pb2.LayerParameter) -> bool:
    try:
        return layer_class(layer.type, layer.name).is_source
    except NetBuildError:
        return False


def _admitted(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    if layer.include:
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def feature_net_param(net_param: caffe_pb2.NetParameter, data_phase: str = "TEST", phase: str = "TEST"):
    """The net in `phase`, but reading the data layers of `data_phase` (TRAIN: the training set, in TEST mode)."""
    data_state = net_state(net_param, PHASES[data_phase])
    state = net_state(net_param, PHASES[phase])
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        if _admitted(layer, data_state if _is_source(layer) else state):
            kept = out.layer.add()
            kept.CopyFrom(layer)
            del kept.include[:]
            del kept.exclude[:]
    out.state.CopyFrom(state)
    return out


def check_blobs(net: Net, names: Iterable[str]) -> None:
    for name in names:
        if name not in net.blob_shapes:
            blobs = [b for b in net.blob_shapes if "_split_" not in b]
            raise TransferError(
                f"net '{net.name}' has no blob named '{name}' to extract{suggest(name, blobs)} "
                f"(blobs: {', '.join(blobs)})"
            )


def dataset_size(net: Net) -> int | None:
    """Items in one pass over the net's (first) data source, when the source can tell."""
    for layer in net.layers:
        if not layer.is_source:
            continue
        return layer.dataset_size()
    return None


# ----- extraction ------------------------------------------------------------------------------------------------
@dataclass
class Features:
    blobs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.blobs.values())))


def _progress(total: int, enabled: bool | None, desc: str):
    enabled = sys.stderr.isatty() if enabled is None else enabled
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="batch", desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


def extract(
    net: Net,
    blobs: list[str],
    batches: int | None = None,
    label_blob: str | None = "label",
    progress: bool | None = None,
) -> Features:
    """Run `batches` forward passes (default: one pass over the data, when its size is known) and keep `blobs`."""
    check_blobs(net, blobs)
    size = dataset_size(net)
    batch = next((net.blob_shapes[t][0] for layer in net.layers if layer.is_source for t in layer.top_names), None)
    if batches is None:
        if size is None or not batch:
            raise TransferError("the data source does not tell its size: give the number of batches (--iterations)")
        batches = math.ceil(size / batch)
    if batches <= 0:
        raise TransferError(f"the number of batches must be positive, got {batches}")
    label_blob = label_blob if label_blob and label_blob in net.blob_shapes else None
    chunks: dict[str, list[np.ndarray]] = {b: [] for b in blobs}
    labels: list[np.ndarray] = []
    bar = _progress(batches, progress, f"features {','.join(blobs)}")
    net.eval()
    with torch.no_grad():
        for _ in range(batches):
            net.forward()
            for name in blobs:
                chunks[name].append(net.blobs[name].data.detach().to("cpu", torch.float32).numpy().copy())
            if label_blob:
                labels.append(net.blobs[label_blob].data.detach().to("cpu").numpy().reshape(-1).copy())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    keep = slice(0, size) if size is not None and batches * (batch or 0) > size else slice(None)
    arrays = {name: np.concatenate(parts)[keep] for name, parts in chunks.items()}
    return Features(arrays, np.concatenate(labels)[keep].astype(np.int64) if labels else None)


def build_feature_net(
    net_param: caffe_pb2.NetParameter,
    weights: Iterable[str] = (),
    data_phase: str = "TEST",
    device: str | torch.device = "cpu",
    source: str = "<net>",
) -> Net:
    from pipeline.weights.io import copy_weights

    param = feature_net_param(net_param, data_phase)
    net = Net(param, phase=caffe_pb2.TEST, level=param.state.level, stages=list(param.state.stage), source=source)
    for path in weights:
        report = copy_weights(net, path)
        if not report.copied:
            raise TransferError(f"{path}: no layer of this file matches a layer of the net '{net.name}'")
    return net.to(device)


# ----- files -----------------------------------------------------------------------------------------------------
def infer_format(path: str | Path) -> str:
    suffix = Path(path).suffix
    return {".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}.get(suffix, "lmdb")


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}_{tag}{path.suffix}")


def write_features(features: Features, outputs: list[str], fmt: str | None = None) -> list[str]:
    """Write to `outputs`: one path for npz/hdf5; one path per blob for npy/lmdb (or one, suffixed per blob)."""
    fmt = fmt or infer_format(outputs[0])
    if fmt not in FORMATS:
        raise TransferError(f"unknown feature format '{fmt}' (one of {', '.join(FORMATS)})")
    names = list(features.blobs)
    written = []
    if fmt in ("npz", "hdf5"):
        if len(outputs) != 1:
            raise TransferError(f"{fmt} holds every blob in one file: give one output, got {len(outputs)}")
        path = Path(outputs[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        items = dict(features.blobs)
        if features.labels is not None:
            items.setdefault("label", features.labels)
        if fmt == "npz":
            np.savez(path, **items)
        else:
            import h5py

            with h5py.File(path, "w") as f:
                for key, value in items.items():
                    f.create_dataset(key, data=value)
        return [str(path)]
    if len(outputs) == 1 and len(names) > 1:
        outputs = [str(_sibling(Path(outputs[0]), n.replace("/", "_"))) for n in names]
    if len(outputs) != len(names):
        raise TransferError(f"{len(outputs)} outputs for {len(names)} blobs: give one per blob (comma-separated)")
    for name, output in zip(names, outputs):
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "npy":
            np.save(path, features.blobs[name])
            if features.labels is not None:
                np.save(_sibling(path, "label"), features.labels)
        else:
            _write_lmdb(path, features.blobs[name], features.labels)
        written.append(str(path))
    return written


def _write_lmdb(path: Path, array: np.ndarray, labels: np.ndarray | None) -> None:
    from pipeline.data.lmdb_source import LmdbWriter

    items = array.reshape(len(array), -1, 1, 1) if array.ndim == 2 else array
    if items.ndim != 4:
        items = array.reshape(len(array), -1, 1, 1)
    with LmdbWriter(path, overwrite=True) as db:
        db.map_size = max(db.map_size, int(items.nbytes * 1.5) + (1 << 20))
        for i, item in enumerate(items):
            datum = caffe_pb2.Datum(channels=item.shape[0], height=item.shape[1], width=item.shape[2])
            datum.float_data.extend(item.astype(np.float32).ravel())
            datum.label = int(labels[i]) if labels is not None else 0
            db.put(f"{i:010d}", datum.SerializeToString())


def read_features(path: str | Path, blob: str | None = None) -> Features:
    """Features written by `write_features` (npz, hdf5, npy + _label.npy, or an LMDB of float Datums)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"feature file '{path}' not found")
    fmt = infer_format(path)
    if fmt in ("npz", "hdf5"):
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as f:
                items = {k: f[k] for k in f.files}
        else:
            import h5py

            items = {}

            def keep(name, node):
                if isinstance(node, h5py.Dataset):
                    items[name] = node[()]

            with h5py.File(path, "r") as f:
                f.visititems(keep)  # (a callback returning a value would stop the visit)
        labels = items.pop("label", None)
        if blob is None:
            if len(items) != 1:
                raise TransferError(f"'{path}' holds blobs {sorted(items)}: name the one to use")
            blob = next(iter(items))
        if blob not in items:
            raise TransferError(f"'{path}' has no blob '{blob}'{suggest(blob, items)} (blobs: {sorted(items)})")
        return Features({blob: items[blob]}, labels)
    if fmt == "npy":
        label_path = _sibling(path, "label")
        labels = np.load(label_path, allow_pickle=False) if label_path.exists() else None
        return Features({blob or path.stem: np.load(path, allow_pickle=False)}, labels)
    from pipeline.data.lmdb_source import LmdbReader, datum_array, parse_datum

    reader = LmdbReader(path)
    try:
        records = reader.read(reader.entries)
    finally:
        reader.close()
    data, labels = [], []
    for key, value in records:
        datum = parse_datum(value, key, path)
        data.append(datum_array(datum, key, path).astype(np.float32))
        labels.append(datum.label)
    return Features({blob or path.name: np.stack(data)}, np.asarray(labels, dtype=np.int64))


# ----- classifiers -----------------------------------------------------------------------------------------------
@dataclass
class ClassifierReport:
    classifier: str
    accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    dims: int
    seconds: float


def make_classifier(kind: str, normalize: str = "l2", c: float = 1.0, seed: int = 0):
    """A scikit-learn pipeline: normalisation ("l2" rows as Razavian et al., "standard" or "none"), then the model."""
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer, StandardScaler
        from sklearn.svm import LinearSVC
    except ImportError as exc:
        raise TransferError(f"classifying features needs scikit-learn ({exc}): pip install scikit-learn") from None
    models = {
        "linear_svm": lambda: LinearSVC(C=c, max_iter=10000, random_state=seed),
        "logreg": lambda: LogisticRegression(C=c, max_iter=2000),
        "rf": lambda: RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
    }
    if kind not in models:
        raise TransferError(f"unknown classifier '{kind}' (one of {', '.join(CLASSIFIERS)})")
    scalers = {"l2": Normalizer, "standard": StandardScaler, "none": None}
    if normalize not in scalers:
        raise TransferError(f"unknown normalisation '{normalize}' (l2, standard or none)")
    steps = [scalers[normalize]()] if scalers[normalize] is not None else []
    return make_pipeline(*steps, models[kind]())


def classify(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    kind: str = "linear_svm",
    normalize: str = "l2",
    c: float = 1.0,
    seed: int = 0,
) -> ClassifierReport:
    """Fit `kind` on the train features and labels, return its accuracy on the test ones."""
    (x_train, y_train), (x_test, y_test) = train, test
    if y_train is None or y_test is None:
        raise TransferError("classifying needs labels with the features (a 'label' blob in the net)")
    x_train = x_train.reshape(len(x_train), -1)
    x_test = x_test.reshape(len(x_test), -1)
    if x_train.shape[1] != x_test.shape[1]:
        raise TransferError(f"train features have {x_train.shape[1]} dimensions, test features {x_test.shape[1]}")
    model = make_classifier(kind, normalize, c, seed)
    start = time.perf_counter()
    model.fit(x_train, y_train)
    seconds = time.perf_counter() - start
    return ClassifierReport(
        kind,
        float((model.predict(x_test) == y_test).mean()),
        float((model.predict(x_train) == y_train).mean()),
        len(x_train),
        len(x_test),
        x_train.shape[1],
        seconds,
    )


__all__ = [
    "CLASSIFIERS",
    "FORMATS",
    "ClassifierReport",
    "Features",
    "build_feature_net",
    "check_blobs",
    "classify",
    "extract",
    "feature_net_param",
    "read_features",
    "write_features",
]
