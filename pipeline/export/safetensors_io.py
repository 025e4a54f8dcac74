"""A net's blobs as a state dict keyed "<layer>.<blob name>" (`conv1.weight`, `conv1.bias`, `bn1.mean_sum`):
the keys of `DeployModule(net).state_dict()`, so `module.load_state_dict(...)` takes either file as it is.
Written as safetensors (`save_safetensors`) or as a torch.save file (`save_torch`, read back with
`torch.load(path, weights_only=True)`).

The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a JSON
header {key: {dtype, shape, data_offsets}, "__metadata__": {str: str}} padded with spaces to 8 bytes, then the raw
little-endian tensors. It is written here directly, one blob at a time from the net's own tensor memory, so a
VGG-16-sized file never exists as a second copy in memory (the `safetensors` package's `save_file` first turns
every tensor into bytes), and read by pipeline/weights/safetensors.py straight into the net's tensors. Files load
with `safetensors.torch.load_file` too, and nothing here unpickles anything.

The metadata carries the deploy prototxt text, so the file alone rebuilds the module (`net_from_safetensors`).
Files keyed "<layer>/<blob index>" (this module's earlier layout, and weights.npz's) still load.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from pipeline.errors import WeightsError
from pipeline.fileio import atomic_writer
from pipeline.weights.format import layer_blob_names
from pipeline.weights.io import CopyReport, copy_layer_blobs
from pipeline.weights.safetensors import open_safetensors_layers, read_header

FORMAT = "caffe-pipeline"
KEYS = "<layer>.<blob name>"


def blob_items(net):
    """("<layer>.<blob name>", tensor) for every blob of every layer, in net order (shared blobs under each layer)."""
    for layer in net.layers:
        for name in layer_blob_names(layer):
            yield f"{layer.name}.{name}", getattr(layer, name)


def state_dict(net) -> dict[str, torch.Tensor]:
    """The net's blobs keyed "<layer>.<blob name>" (detached, on the CPU, float32, in plain row-major memory even
    where a layer keeps its blob otherwise, as Convolution does): what `save_safetensors` and `save_torch` write."""
    return {key: blob.detach().to("cpu", torch.float32).contiguous() for key, blob in blob_items(net)}


def _header(entries: list[tuple[str, tuple[int, ...], int]], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, shape, nbytes in entries:
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def save_safetensors(net, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write every blob of `net` to `path` (atomically), keys "<layer>.<blob name>", float32."""
    items = list(blob_items(net))
    entries = [(key, tuple(blob.shape), blob.numel() * 4) for key, blob in items]
    meta = {"format": FORMAT, "keys": KEYS, "net": net.name or ""}
    meta.update(metadata or {})
    header = _header(entries, {k: str(v) for k, v in meta.items()})
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for _, blob in items:
            array = blob.detach().to("cpu", torch.float32).contiguous().numpy()
            f.write(memoryview(array.reshape(-1).astype("<f4", copy=False)).cast("B"))


def save_torch(net, path: str | Path) -> None:
    """torch.save of `state_dict(net)` to `path` (atomically): a plain {str: tensor} dict that
    `torch.load(path, weights_only=True)` reads and `DeployModule(net).load_state_dict` takes."""
    try:
        with atomic_writer(path) as f:
            torch.save(state_dict(net), f)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot write: {exc.strerror or exc}") from None


def load_safetensors(net, path: str | Path) -> CopyReport:
    """Copy a safetensors file (keys "<layer>.<blob name>" or "<layer>/<i>") into `net` with Caffe's rules (by
    layer name, blob count and shapes must match; layers the net lacks are skipped and reported). The values go
    straight from the file into the net's tensors."""
    with open_safetensors_layers(path) as layers:
        return copy_layer_blobs(net, layers, str(path))


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    return read_header(path)[1]


def net_from_safetensors(path: str | Path):
    """Rebuild the net a `save_safetensors` file came from (its prototxt is in the metadata) with its weights."""
    from pipeline.export.deploy import build_net_for_weights
    from pipeline.proto import caffe_pb2
    from pipeline.text.prototxt import parse_text

    metadata = read_safetensors_metadata(path)
    if "prototxt" not in metadata:
        raise WeightsError(f"{path}: no 'prototxt' in the metadata: give the prototxt and use load_safetensors")
    param = parse_text(metadata["prototxt"], caffe_pb2.NetParameter(), f"{path}:prototxt")
    net, _ = build_net_for_weights(param, [path], source=str(path))
    return net
