"""What kind of weights file a path holds, from its first bytes, and how tensor keys name Caffe blobs.

Every reader of weights files asks `weights_format` which reader to use. Protobuf has no magic number, so a
file none of these signatures fits is read as a binary caffemodel; where that fails and the file's name said
another format, the error says so too (`name_hint`):

    HDF5 (Caffe's .caffemodel.h5)  b"\\x89HDF\\r\\n\\x1a\\n" at offset 0 (or 512, 1024, ... after a user block)
    safetensors                    8-byte little-endian header length n, then n bytes of JSON starting "{"
    torch.save (zip)               a zip holding "<archive>/data.pkl"
    torch.export (.pt2)            a zip holding "<archive>/archive_format" or serialized_exported_program.json
    numpy .npz                     a zip of ".npy" members
    legacy torch.save (pickle)     pickle protocol 2 then torch's magic number
    caffemodel                     anything else (a binary NetParameter)

Keys of tensor files (safetensors, torch state dicts, .npz) name a blob either by the layer's blob name,
"<layer>.<blob>" (`conv1.weight`, `conv1.bias`, `bn1.mean_sum`: what `DeployModule(net).state_dict()` and
`convert --to pt|safetensors` use), or by Caffe's blob index, "<layer>/<index>" (the reference weights.npz
layout). Layer names may contain "/" and ".": a key is split at its last separator.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from pipeline.errors import WeightsError

CAFFEMODEL, HDF5, SAFETENSORS, TORCH, NPZ, PT2 = "caffemodel", "hdf5", "safetensors", "torch", "npz", "pt2"

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# torch.save's legacy (pre-zip) files start with a protocol-2 pickle of this LONG1 magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_SAFETENSORS_HEADER = 100 << 20
_BY_NAME = (
    (".caffemodel.h5", HDF5),
    (".h5", HDF5),
    (".hdf5", HDF5),
    (".safetensors", SAFETENSORS),
    (".npz", NPZ),
    (".pt2", PT2),
    (".pt", TORCH),
    (".pth", TORCH),
)


def sniff(path: str | Path) -> str | None:
    """The format the first bytes of `path` show, or None (unrecognised, empty, unreadable: the caller's reader
    then reports the file in its own words)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            if head.startswith(_HDF5_MAGIC):
                return HDF5
            if head.startswith(_TORCH_LEGACY_MAGIC):
                return TORCH
            if head[:4] in _ZIP_MAGICS:
                return _zip_kind(path)
            if len(head) >= 9 and head[8:9] == b"{":
                (length,) = struct.unpack("<Q", head[:8])
                if 2 <= length <= min(size - 8, _MAX_SAFETENSORS_HEADER):
                    return SAFETENSORS
            # HDF5 allows a user block of 512, 1024, 2048, ... bytes before the superblock.
            offset = 512
            while offset + 8 <= min(size, 1 << 20):
                f.seek(offset)
                if f.read(8) == _HDF5_MAGIC:
                    return HDF5
                offset *= 2
    except OSError:
        return None
    return None


def _zip_kind(path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # zipfile raises BadZipFile, OSError, ValueError, EOFError, struct errors... on a bad zip
        return None
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return TORCH
    if any(n.endswith(("archive_format", "serialized_exported_program.json")) for n in names):
        return PT2
    if names and all(n.endswith(".npy") for n in names):
        return NPZ
    return None


def by_name(path: str | Path) -> str:
    name = Path(path).name.lower()
    return next((kind for suffix, kind in _BY_NAME if name.endswith(suffix)), CAFFEMODEL)


def weights_format(path: str | Path) -> str:
    """The reader for `path`: what its content shows, else a binary caffemodel. A torch.export program is no
    weights file: a clear error."""
    kind = sniff(path) or CAFFEMODEL
    if kind == PT2:
        raise WeightsError(
            f"{path}: a torch.export program (.pt2), not a weights file: give the caffemodel, safetensors or "
            "torch state dict it came from"
        )
    return kind


_SIGNATURES = {
    HDF5: "the HDF5 signature",
    SAFETENSORS: "a safetensors header (8-byte length, then JSON)",
    TORCH: "a torch.save zip or pickle",
    NPZ: "a zip of .npy arrays",
    PT2: "a torch.export zip",
}


def name_hint(path: str | Path) -> str:
    """For the error of a file read as a caffemodel: what its name claimed it was, where it claimed otherwise."""
    kind = by_name(path)
    if kind == CAFFEMODEL:
        return ""
    return f" (named like a {kind} file, but it does not start with {_SIGNATURES[kind]}: damaged, or misnamed?)"


# ----- tensor keys -----------------------------------------------------------------------------------------
def split_key(key: str) -> tuple[str, int | str] | None:
    """("conv1", 0) for "conv1/0"; ("conv1", "weight") for "conv1.weight"; None for anything else."""
    layer, sep, index = key.rpartition("/")
    if sep and layer and index.isdigit():
        return layer, int(index)
    layer, sep, blob = key.rpartition(".")
    if sep and layer and blob.isidentifier():
        return layer, blob
    return None


class NamedBlobs(dict):
    """A layer's blobs from a file keyed "<layer>.<blob name>": {blob name: blob}, matched to the net layer's
    blobs by name (`copy_layer_blobs`)."""


def group_keys(origin, items) -> dict[str, list | NamedBlobs]:
    """{layer: [blobs by index] or NamedBlobs} from (key, blob) pairs, in first-seen layer order."""
    indexed: dict[str, dict[int, object]] = {}
    named: dict[str, NamedBlobs] = {}
    order: list[str] = []
    for key, blob in items:
        parts = split_key(key)
        if parts is None:
            raise WeightsError(f"{origin}: key '{key}' is neither '<layer>.<blob name>' nor '<layer>/<blob index>'")
        layer, which = parts
        if layer not in indexed and layer not in named:
            order.append(layer)
        group = indexed.setdefault(layer, {}) if isinstance(which, int) else named.setdefault(layer, NamedBlobs())
        group[which] = blob
        if layer in indexed and layer in named:
            raise WeightsError(f"{origin}: layer '{layer}': keys mix '<layer>.<blob name>' and '<layer>/<index>'")
    result: dict[str, list | NamedBlobs] = {}
    for layer in order:
        if layer in named:
            result[layer] = named[layer]
            continue
        blobs = indexed[layer]
        if sorted(blobs) != list(range(len(blobs))):
            raise WeightsError(f"{origin}: layer '{layer}': blob indices {sorted(blobs)} are not 0..{len(blobs) - 1}")
        result[layer] = [blobs[i] for i in range(len(blobs))]
    return result


def layer_blob_names(layer) -> list[str]:
    """The names of the blobs a layer holds, in Caffe's blob order (an absent bias left out)."""
    return [name for name in layer.blob_names if getattr(layer, name, None) is not None]
