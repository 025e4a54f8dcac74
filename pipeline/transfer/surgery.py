"""Net surgery on weights by layer name: copy, rename, drop, prefix, merge, re-initialise; save as a caffemodel.

What the original study's pycaffe weight-mapping scripts did by hand (open a caffemodel, copy chosen layers into
layers of other names such as `conv1_1 -> conv_st_1_1`, save), as functions over an ordered
`{layer: [blob arrays]}` mapping. Saving with a target net (`net=`) fills that net by name, checking every shape,
and writes a full caffemodel of it; without one, a weights-only caffemodel (layer names and blobs, which is all
Caffe's CopyTrainedLayersFrom reads).
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pipeline.errors import WeightsError
from pipeline.fileio import atomic_writer
from pipeline.proto import caffe_pb2
from pipeline.transfer.netedit import suggest
from pipeline.weights.caffemodel import write_caffemodel
from pipeline.weights.h5 import write_hdf5
from pipeline.weights.io import (
    CopyReport,
    copy_layer_blobs,
    read_weight_arrays,
    save_caffemodel,
    save_caffemodel_h5,
)


def read_weights(path: str | Path) -> OrderedDict[str, list[np.ndarray]]:
    """Every layer with blobs, in file order, in the shapes the layers' blobs have (as Caffe's net.save() writes
    them: an old file's legacy 4-D shapes upgraded): a caffemodel (any version), Caffe's HDF5, safetensors, a
    torch state dict or .npz, told apart by content."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' not found")
    layers = read_weight_arrays(path)
    missing = [name for name, blobs in layers.items() if any(b is None for b in blobs)]
    if missing:
        raise WeightsError(f"{path}: layers {missing} share blobs stored under other layers; load it into a net")
    return OrderedDict((name, [np.asarray(b, dtype=np.float32) for b in blobs]) for name, blobs in layers.items())


def parse_map(items: Iterable[str] | str) -> dict[str, str]:
    """`["a=b", "c=d"]` or `"a=b,c=d"` -> {"a": "b", "c": "d"}."""
    if isinstance(items, str):
        items = [items]
    result = {}
    for item in (part for chunk in items for part in chunk.split(",") if part.strip()):
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise WeightsError(f"'{item}' is not a layer mapping of the form old=new")
        result[source.strip()] = target.strip()
    return result


def _need(weights: Mapping, name: str, what: str) -> None:
    if name not in weights:
        raise WeightsError(
            f"{what}: no layer '{name}' in the weights{suggest(name, weights)} (layers: {list(weights)})"
        )


def _select(weights: Mapping, patterns: Iterable[str], what: str) -> list[str]:
    chosen = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            hits = [n for n in weights if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise WeightsError(f"{what}: pattern '{pattern}' matches no layer (layers: {list(weights)})")
            chosen += [h for h in hits if h not in chosen]
        else:
            _need(weights, pattern, what)
            if pattern not in chosen:
                chosen.append(pattern)
    return chosen


def rename(weights: Mapping, mapping: Mapping[str, str]) -> OrderedDict:
    """Layers renamed by `mapping` (old -> new), in place in the order; a new name may not clash."""
    for old in mapping:
        _need(weights, old, f"rename {old}={mapping[old]}")
    result = OrderedDict((mapping.get(name, name), blobs) for name, blobs in weights.items())
    if len(result) != len(weights):
        names = [mapping.get(n, n) for n in weights]
        clashes = sorted({n for n in names if names.count(n) > 1})
        raise WeightsError(f"renaming gives two layers the same name: {clashes}")
    return result


def copy(weights: Mapping, mapping: Mapping[str, str], overwrite: bool = False) -> OrderedDict:
    """Add a copy of layer `source` under the name `target` for each pair (the source stays)."""
    result = OrderedDict(weights)
    for source, target in mapping.items():
        _need(weights, source, f"copy {source}={target}")
        if target in result and not overwrite:
            raise WeightsError(f"copy {source}={target}: layer '{target}' exists already (drop it first)")
        result[target] = [b.copy() for b in weights[source]]
    return result


def drop(weights: Mapping, names: Iterable[str]) -> OrderedDict:
    gone = set(_select(weights, names, "drop"))
    return OrderedDict((n, b) for n, b in weights.items() if n not in gone)


def keep(weights: Mapping, names: Iterable[str]) -> OrderedDict:
    kept = set(_select(weights, names, "keep"))
    return OrderedDict((n, b) for n, b in weights.items() if n in kept)


def add_prefix(weights: Mapping, prefix: str) -> OrderedDict:
    """Every layer renamed `<prefix><name>`, as a teacher embedded with `embed_net(prefix=...)` expects."""
    return OrderedDict((prefix + n, b) for n, b in weights.items())


def merge(base: Mapping, other: Mapping, overwrite: bool = False) -> OrderedDict:
    """Layers of both; a name in both is an error unless `overwrite` (then `other` wins)."""
    clashes = [n for n in other if n in base]
    if clashes and not overwrite:
        raise WeightsError(f"merge: layers in both weight sets: {clashes} (rename or prefix one side first)")
    result = OrderedDict(base)
    result.update(other)
    return result


def reinit(weights: Mapping, net, names: Iterable[str]) -> OrderedDict:
    """The named layers' blobs replaced by `net`'s own freshly filled ones (its fillers, its seed)."""
    result = OrderedDict(weights)
    for name in names:
        layer = net.layer_by_name.get(name)
        if layer is None or not layer.blobs:
            raise WeightsError(
                f"reinit: net '{net.name}' has no layer '{name}' with blobs{suggest(name, net.layer_by_name)}"
            )
        result[name] = [b.detach().to("cpu").float().numpy().copy() for b in layer.blobs]
    return result


def save_weights(weights: Mapping, path: str | Path, net=None, name: str = "") -> CopyReport | None:
    """Write `weights`: into `net` by name then the whole net (returns what was copied), or weights-only.

    The format follows the name: `.h5`/`.hdf5` Caffe's HDF5 layout, anything else a binary caffemodel.
    """
    path = Path(path)
    hdf5 = path.suffix in (".h5", ".hdf5")
    if net is not None:
        report = copy_layer_blobs(net, weights, str(path))
        (save_caffemodel_h5 if hdf5 else save_caffemodel)(net, path)
        return report
    if hdf5:
        write_hdf5(path, list(weights.items()))
        return None
    records = (
        (caffe_pb2.LayerParameter(name=n), [np.asarray(b, dtype=np.float32) for b in blobs])
        for n, blobs in weights.items()
    )
    try:
        with atomic_writer(path) as f:
            write_caffemodel(f, name, records)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return None
