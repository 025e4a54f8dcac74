"""Text prototxt to protobuf messages, with errors that point at file:line:column and the layer at fault.

Below templates, upgrade and compose, which use it; pipeline/text/prototxt.py reads (templated) files through it.
"""

from __future__ import annotations

import difflib
import re

from google.protobuf import text_format

from pipeline.errors import PrototxtError
from pipeline.proto import caffe_pb2
from pipeline.text import source_map

_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_UNKNOWN_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')


def parse_text(text: str, message, path: str = "<string>", template: str | None = None):
    """Parse prototxt text into `message` (an instance), raising PrototxtError on any problem.

    A net's text is remembered (pipeline/text/source_map.py) so that net-build errors can name the file:line of the
    layer at fault; `template` is the text it was rendered from where that is not the file at `path`.
    """
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        detail = _strip_position(str(exc))
        detail += _suggestion(detail)
        layer = _enclosing_layer(text, line)
        if layer:
            detail = f"in layer '{layer}': {detail}"
        raise PrototxtError(detail, path, line, column) from None
    if isinstance(message, caffe_pb2.NetParameter):
        source_map.remember(path, text, template)
    return message


def _strip_position(message: str) -> str:
    return re.sub(r"^\d+:\d+\s*:\s*", "", message)


def _suggestion(detail: str) -> str:
    match = _UNKNOWN_FIELD.search(detail)
    if match:
        descriptor = _descriptor(match.group(1))
        if descriptor is not None:
            names = [f.name for f in descriptor.fields]
            close = difflib.get_close_matches(match.group(2), names, n=3, cutoff=0.5)
            if close:
                return f" (did you mean {', '.join(close)}?)"
            return f" (valid fields: {', '.join(sorted(names))})"
    match = _UNKNOWN_ENUM.search(detail)
    if match:
        enum = _enum_descriptor(match.group(1))
        if enum is not None:
            return f" (valid values: {', '.join(v.name for v in enum.values)})"
    return ""


def _descriptor(full_name: str):
    name = full_name.split(".", 1)[-1]
    current = caffe_pb2.DESCRIPTOR.message_types_by_name.get(name.split(".")[0])
    for part in name.split(".")[1:]:
        current = current.nested_types_by_name.get(part) if current else None
    return current


def _enum_descriptor(full_name: str):
    parts = full_name.split(".")[1:]
    if len(parts) == 1:
        return caffe_pb2.DESCRIPTOR.enum_types_by_name.get(parts[0])
    message = _descriptor(".".join(["caffe", *parts[:-1]]))
    return message.enum_types_by_name.get(parts[-1]) if message else None


def _enclosing_layer(text: str, line: int) -> str | None:
    """Name of the top-level `layer`/`layers` block that contains `line` (1-based), if any."""
    lines = text.splitlines()
    depth, block_start, block_kind = 0, None, None
    for number, raw in enumerate(lines[:line], start=1):
        code = raw.split("#", 1)[0]
        if depth == 0 and re.match(r"\s*(layers?)\s*\{", code):
            block_start, block_kind = number, True
        depth += code.count("{") - code.count("}")
        if depth <= 0:
            depth, block_kind = 0, None
    if not block_kind or block_start is None:
        return None
    depth = 0
    for raw in lines[block_start - 1 :]:
        code = raw.split("#", 1)[0]
        match = re.match(r'\s*name\s*:\s*"([^"]*)"', code)
        if match and depth == 1:
            return match.group(1)
        depth += code.count("{") - code.count("}")
        if depth <= 0 and raw is not lines[block_start - 1]:
            break
    return None
