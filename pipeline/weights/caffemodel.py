"""Streaming .caffemodel access: each layer's name and blobs located in the file, and a writer that emits
Caffe's Net::ToProto layout from array memory.

Reading parses only the wire structure (names, blob shapes, where the floats lie); the floats are read from
the file straight into the net's tensors when copied. Memory while loading is the net itself plus at most
one blob, never the whole file once or twice over. V0 and V1 files are read the way Caffe's upgrade sees
them: a V1 layer's name and blobs, or those of the V0 layer nested inside it.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from pathlib import Path

from google.protobuf.message import DecodeError

from pipeline.errors import PipelineError, WeightsError
from pipeline.proto import caffe_pb2
from pipeline.text.upgrade import upgrade_net
from pipeline.text.upgrade_v1 import V0_TYPES, V1_TYPE_NAMES
from pipeline.weights.blobs import BlobRef, encode_blob_parts, scan_blob
from pipeline.weights.wire import LEN, VARINT, WireError, iter_fields, len_header, split_at_field

# Field numbers: NetParameter.layer / .layers; LayerParameter name, type, blobs; V1LayerParameter name, type,
# blobs, nested V0 layer; V0LayerParameter name, type, blobs.
_NET_LAYER, _NET_LAYERS = 100, 2
_V2_NAME, _V2_TYPE, _V2_BLOBS = 1, 2, 7
_V1_NAME, _V1_TYPE, _V1_BLOBS, _V1_V0 = 4, 5, 6, 1
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50

LayerBlobs = list[tuple[str, list[BlobRef]]]
TypedLayerBlobs = list[tuple[str, str, list[BlobRef]]]

#: How many axes each blob of a layer type has once set up (Caffe's LayerSetUp reshapes), for the types whose
#: blobs old files store as legacy 4-D (num, channels, height, width): an InnerProduct weight saved by a V1
#: Caffe as [1, 1, 500, 800] is a [500, 800] blob in the net, and Caffe's net.save() writes it so.
_BLOB_AXES = {
    "Convolution": (4, 1),
    "Deconvolution": (4, 1),
    "InnerProduct": (2, 1),
    "Embed": (2, 1),
    "PReLU": (1,),
    "BatchNorm": (1, 1, 1),
}


def layer_blob_shape(layer_type: str, index: int, shape: tuple[int, ...], legacy: bool) -> tuple[int, ...]:
    """The shape blob `index` of a `layer_type` layer has in the net, from the shape stored in the file: a legacy
    4-D shape loses the leading 1s the layer's own blob does not have (other shapes are left as stored)."""
    axes = _BLOB_AXES.get(layer_type, ())
    if not legacy or index >= len(axes) or len(shape) <= axes[index]:
        return tuple(shape)
    cut = len(shape) - axes[index]
    return tuple(shape[cut:]) if all(d == 1 for d in shape[:cut]) else tuple(shape)


def parse_caffemodel(path: str | Path) -> caffe_pb2.NetParameter:
    """The binary NetParameter as stored (not upgraded). Parsed from a memory map: no copy of the file bytes."""
    path = Path(path)
    net = caffe_pb2.NetParameter()
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise WeightsError(f"{path}: empty file, not a caffemodel")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                net.ParseFromString(view)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{path}: not a valid caffemodel (binary NetParameter): {exc}{_text_hint(path)}") from None
    if not (net.layer or net.layers):
        raise WeightsError(
            f"{path}: no layers found: not a caffemodel (truncated, or another file type?){_text_hint(path)}"
        )
    return net


def _text_hint(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return ""
    return "; it looks like a text prototxt" if head.lstrip()[:5] in (b"name:", b"layer", b"input") else ""


def upgrade_caffemodel(net: caffe_pb2.NetParameter, path: str | Path) -> caffe_pb2.NetParameter:
    """upgrade_net with its errors as WeightsErrors (the file is a weights file)."""
    try:
        return upgrade_net(net, str(path))
    except PipelineError as exc:
        raise WeightsError(str(exc)) from None


def read_caffemodel(path: str | Path) -> caffe_pb2.NetParameter:
    """Parse a binary .caffemodel, upgraded to V2 layers (V0/V1 files) as Caffe does on load."""
    return upgrade_caffemodel(parse_caffemodel(path), path)


def _name(buf, a: int, b: int) -> str:
    # Caffe's names are bytes; an undecodable one just never matches a layer of the net.
    return bytes(buf[a:b]).decode("utf-8", "surrogateescape")


def _scan_message(buf, start: int, end: int, path: str):
    """(V2 name, type, blobs)."""
    name, kind, blobs = "", "", []
    for number, wire_type, a, b in iter_fields(buf, start, end):
        if wire_type != LEN:
            continue
        if number == _V2_NAME:
            name = _name(buf, a, b)
        elif number == _V2_TYPE:
            kind = _name(buf, a, b)
        elif number == _V2_BLOBS:
            blobs.append(scan_blob(buf, a, b, path))
    return name, kind, blobs


def _scan_v1_layer(buf, start: int, end: int, path: str):
    """(V1 name, V2 type name, V1 blobs, [(V0 name or None, V2 type name or None, V0 blobs) per nested V0 layer])."""
    name, kind, blobs, nested = "", "", [], []
    for number, wire_type, a, b in iter_fields(buf, start, end):
        if number == _V1_TYPE and wire_type == VARINT:
            kind = V1_TYPE_NAMES.get(a, "")
        if wire_type != LEN:
            continue
        if number == _V1_NAME:
            name = _name(buf, a, b)
        elif number == _V1_BLOBS:
            blobs.append(scan_blob(buf, a, b, path))
        elif number == _V1_V0:
            v0_name, v0_kind, v0_blobs = None, None, []
            for inner, inner_type, c, d in iter_fields(buf, a, b):
                if inner_type == LEN and inner == _V0_NAME:
                    v0_name = _name(buf, c, d)
                elif inner_type == LEN and inner == _V0_TYPE:
                    v0_kind = V1_TYPE_NAMES.get(V0_TYPES.get(_name(buf, c, d)), "")
                elif inner_type == LEN and inner == _V0_BLOBS:
                    v0_blobs.append(scan_blob(buf, c, d, path))
            nested.append((v0_name, v0_kind, v0_blobs))
    return name, kind, blobs, nested


def scan_caffemodel(path: str | Path) -> LayerBlobs:
    """Each layer's (name, blobs) in file order, as Caffe sees the file after upgrading it."""
    return [(name, blobs) for name, _, blobs in scan_caffemodel_layers(path)]


def scan_caffemodel_layers(path: str | Path) -> TypedLayerBlobs:
    """Each layer's (name, V2 type name, blobs) in file order, as Caffe sees the file after upgrading it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise WeightsError(f"{path}: empty file, not a caffemodel")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _scan(buf, size, path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (WireError, DecodeError, ValueError, OverflowError) as exc:
        raise WeightsError(f"{path}: not a valid caffemodel (binary NetParameter): {exc}") from None


def _scan(buf, size: int, path: str) -> TypedLayerBlobs:
    v2: TypedLayerBlobs = []
    v1 = []
    for number, wire_type, a, b in iter_fields(buf, 0, size):
        if number == _NET_LAYER and wire_type == LEN:
            v2.append(_scan_message(buf, a, b, path))
        elif number == _NET_LAYERS and wire_type == LEN:
            v1.append(_scan_v1_layer(buf, a, b, path))
    if v1 and v2:
        raise WeightsError(
            f"{path}: has both V2 'layer' ({len(v2)}) and V1 'layers' ({len(v1)}) entries; "
            "Caffe's upgrade would drop the 'layer' ones"
        )
    if not v1:
        if not v2:
            raise WeightsError(f"{path}: no layers found: not a caffemodel (truncated, or another file type?)")
        return v2
    if not any(nested for *_, nested in v1):
        return [(name, kind, blobs) for name, kind, blobs, _ in v1]
    result: TypedLayerBlobs = []
    for index, (name, _, _, nested) in enumerate(v1):
        if not nested:
            raise WeightsError(f"{path}: layer '{name or index}': V1 layer in a net of V0 layers")
        v0_names = [n for n, _, _ in nested if n is not None]
        v0_kinds = [k for _, k, _ in nested if k is not None]
        # Protobuf merges repeated occurrences of a message field: last name wins, blobs add up.
        result.append(
            (
                v0_names[-1] if v0_names else "",
                v0_kinds[-1] if v0_kinds else "",
                [blob for *_, blobs in nested for blob in blobs],
            )
        )
    return result


# ----- writing ---------------------------------------------------------------------------------------------
def write_caffemodel(f, name: str, layers: Iterable[tuple[caffe_pb2.LayerParameter, list]]) -> None:
    """Write a binary NetParameter as Caffe's Net::ToProto + WriteProtoToBinaryFile do: `name`, then each layer
    (its parameter with `blobs` spliced in at their field position, as protobuf orders fields).

    `layers` yields (LayerParameter without blobs, blob arrays); arrays are written from their own memory.
    """
    f.write(caffe_pb2.NetParameter(name=name).SerializeToString())
    for param, arrays in layers:
        head, tail = split_at_field(param.SerializeToString(), _V2_BLOBS)
        blobs = [encode_blob_parts(array) for array in arrays]
        sizes = [len(h) + p.nbytes + len(s) for h, p, s in blobs]
        length = len(head) + len(tail) + sum(len(len_header(_V2_BLOBS, n)) + n for n in sizes)
        f.write(len_header(_NET_LAYER, length))
        f.write(head)
        for (header, payload, shape), n in zip(blobs, sizes):
            f.write(len_header(_V2_BLOBS, n))
            f.write(header)
            f.write(payload)
            f.write(shape)
        f.write(tail)
