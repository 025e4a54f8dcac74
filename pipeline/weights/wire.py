"""Just enough of the protobuf wire format to stream the blobs of a caffemodel in and out.

Parsing a multi-GB caffemodel with protobuf holds every float in the message while the net holds another
copy; these helpers find where each blob's floats lie in the file (to read them straight into the net's
tensors) and write blobs from array memory, so neither direction holds a second copy of the weights.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = range(6)
_MAX_GROUP_DEPTH = 64


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message (callers turn it into a WeightsError)."""


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    for i in range(10):
        if pos + i >= end:
            raise WireError(f"varint runs past the end of its message at byte {pos}")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos + i + 1
        shift += 7
    raise WireError(f"varint longer than 10 bytes at byte {pos}")


def iter_fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field of the message in buf[start:end].

    For VARINT fields the value is decoded into `value start` (and `value end` is where the next field begins).
    Groups (a long-dead encoding) are skipped as a unit, as protobuf does with unknown fields.
    """
    for _, field, wire_type, a, b in _fields(buf, start, end):
        yield field, wire_type, a, b


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    pos = start
    while pos < end:
        key_start = pos
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield key_start, field, wire_type, value, pos
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise WireError(f"field {field} claims {length} bytes at byte {pos}, only {end - pos} left")
            yield key_start, field, wire_type, pos, pos + length
            pos += length
        elif wire_type in (FIXED32, FIXED64):
            size = 4 if wire_type == FIXED32 else 8
            if size > end - pos:
                raise WireError(f"fixed-size field {field} truncated at byte {pos}")
            yield key_start, field, wire_type, pos, pos + size
            pos += size
        elif wire_type == START_GROUP:
            group_start = pos
            pos = _skip_group(buf, pos, end, field, 1)
            yield key_start, field, wire_type, group_start, pos
        else:
            raise WireError(f"invalid wire type {wire_type} (field {field}) at byte {pos}")


def _skip_group(buf, pos: int, end: int, field: int, depth: int) -> int:
    if depth > _MAX_GROUP_DEPTH:
        raise WireError("groups nested too deeply")
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        inner, wire_type = key >> 3, key & 7
        if wire_type == END_GROUP:
            if inner != field:
                raise WireError(f"group {field} closed by end-group {inner}")
            return pos
        if wire_type == VARINT:
            _, pos = read_varint(buf, pos, end)
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise WireError(f"field {inner} claims {length} bytes at byte {pos}, only {end - pos} left")
            pos += length
        elif wire_type in (FIXED32, FIXED64):
            pos += 4 if wire_type == FIXED32 else 8
        elif wire_type == START_GROUP:
            pos = _skip_group(buf, pos, end, inner, depth + 1)
        else:
            raise WireError(f"invalid wire type {wire_type} (field {inner}) at byte {pos}")
    raise WireError(f"group {field} is never closed")


def encode_varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values take 10 bytes, as protobuf writes them
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return encode_varint(field << 3 | wire_type)


def len_header(field: int, length: int) -> bytes:
    """The bytes in front of a length-delimited field's payload."""
    return key(field, LEN) + encode_varint(length)


def split_at_field(buf: bytes, field: int) -> tuple[bytes, bytes]:
    """Split a serialized message (fields in number order, as protobuf writes them) before the first field
    numbered above `field`, so a repeated field `field` can be spliced in where protobuf would put it."""
    for key_start, number, _, _, _ in _fields(buf, 0, len(buf)):
        if number > field:
            return buf[:key_start], buf[key_start:]
    return buf, b""
