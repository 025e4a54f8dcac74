"""Where each layer of a parsed net prototxt was written: file and line, for net-build errors.

protobuf's text_format keeps no line numbers for messages, so the text is scanned for its top-level `layer {`
(or V0/V1 `layers {`) blocks, skipping comments and strings. `pipeline.text.prototxt.parse_text` remembers the last
few net texts it parsed; only when a net fails to build are they looked at again: each is re-parsed, upgraded
as the reader upgrades it, and its layers fingerprinted, so the failing layer of the net being built is found by
its content (the text the net most likely came from wins: the one holding most of its layers). A net built in
code from a NetParameter no text produced has no location, and its errors read as before.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK_FIELDS = ("layer", "layers")
_RECENT: deque[_Read] = deque(maxlen=32)


def top_level_blocks(text: str) -> list[tuple[str, int]]:
    """`(field name, 1-based line)` of each top-level message field of a text-format message, in order.

    `# comments`, quoted strings (with escapes), `{...}` and `<...>` nesting are honoured; `layer: {` counts.
    """
    blocks: list[tuple[str, int]] = []
    depth, line, i, n = 0, 1, 0, len(text)
    pending: tuple[str, int] | None = None  # an identifier at depth 0, until we see what follows it
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'":
            pending = None
            i += 1
            while i < n and text[i] != c and text[i] != "\n":
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c in "{<":
            if depth == 0 and pending is not None:
                blocks.append(pending)
            pending = None
            depth += 1
            i += 1
        elif c in "}>":
            pending = None
            depth = max(depth - 1, 0)
            i += 1
        elif c == ":":
            i += 1  # `name: {` is a message field like `name {`
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            pending = (text[start:i], line) if depth == 0 else None
        else:
            pending = None
            i += 1
    return [b for b in blocks if b[0] in _BLOCK_FIELDS]


def fingerprint(layer) -> bytes:
    return hashlib.blake2b(layer.SerializePartialToString(deterministic=True), digest_size=16).digest()


@dataclass
class Location:
    path: str
    line: int
    rendered: bool = False

    def __str__(self) -> str:
        if self.rendered:
            return f"{self.path}:{self.line} (line of the text rendered from this template)"
        return f"{self.path}:{self.line}"


@dataclass
class _Read:
    path: str
    text: str
    template: str | None
    lines: dict[bytes, list[int]] | None = field(default=None)
    rendered: bool = False

    def resolve(self) -> dict[bytes, list[int]]:
        """Fingerprint -> lines of the layers of this text, as the reader upgrades them (computed once)."""
        if self.lines is None:
            self.lines = {}
            try:
                self._resolve()
            except Exception:  # noqa: BLE001 - a text we cannot read back simply locates nothing
                self.lines = {}
        return self.lines

    def _resolve(self) -> None:
        from google.protobuf import text_format

        from pipeline.proto import caffe_pb2
        from pipeline.text.upgrade import upgrade_net

        template = self.template
        if template is None and Path(self.path).is_file():
            template = Path(self.path).read_text()
        self.rendered = template is not None and template != self.text
        raw = text_format.Parse(self.text, caffe_pb2.NetParameter())
        blocks = top_level_blocks(self.text)
        counts = {kind: sum(1 for k, _ in blocks if k == kind) for kind in _BLOCK_FIELDS}
        if counts["layer"] != len(raw.layer) or counts["layers"] != len(raw.layers):
            return  # the scan and the parser disagree: locate nothing rather than something wrong
        written = iter(raw.layer)
        written_v1 = iter(raw.layers)
        names_lines = []
        for kind, line in blocks:
            if kind == "layer":
                names_lines.append((next(written).name, line))
            else:
                v1 = next(written_v1)
                names_lines.append((v1.name or v1.layer.name, line))
        copy = caffe_pb2.NetParameter()
        copy.CopyFrom(raw)
        upgraded = upgrade_net(copy, self.path)
        if [layer.name for layer in upgraded.layer] == [name for name, _ in names_lines]:
            pairs = zip(upgraded.layer, (line for _, line in names_lines))
        else:  # upgrading added or merged layers: match by name (the k-th layer of a name to its k-th block)
            by_name: dict[str, list[int]] = {}
            for name, line in names_lines:
                by_name.setdefault(name, []).append(line)
            pairs = []
            for layer in upgraded.layer:
                lines = by_name.get(layer.name)
                if lines:
                    pairs.append((layer, lines.pop(0)))
        for layer, line in pairs:
            self.lines.setdefault(fingerprint(layer), []).append(line)


def remember(path: str, text: str, template: str | None = None) -> None:
    """Note a net text just parsed (`template`: the text it was rendered from, when not the file at `path`)."""
    _RECENT.append(_Read(str(path), text, template))


def forget() -> None:
    _RECENT.clear()


def paths_holding(match) -> list[str]:
    """The paths of the recently parsed net texts, newest first, that hold a layer (as written) for which
    `match(layer)` is true. Each text is parsed afresh: for rare look-ups, such as the folder of the prototxt a
    Python layer came from."""
    from google.protobuf import text_format

    from pipeline.proto import caffe_pb2

    found: list[str] = []
    for read in reversed(_RECENT):
        try:
            net = text_format.Parse(read.text, caffe_pb2.NetParameter())
        except Exception:  # noqa: BLE001 - a text we cannot read back holds nothing
            continue
        if read.path not in found and any(match(layer) for layer in net.layer):
            found.append(read.path)
    return found


def locate(layers, index: int) -> Location | None:
    """Where `layers[index]` (a LayerParameter of the net `layers` as written, before Split insertion) was
    written, or None when no recently parsed text holds it."""
    if not _RECENT or not 0 <= index < len(layers):
        return None
    prints = [fingerprint(layer) for layer in layers]
    target = prints[index]
    occurrence = prints[:index].count(target)
    reads = list(reversed(_RECENT))
    best, best_score = None, 0
    for read in reads:
        found = read.resolve()
        score = sum(1 for p in prints if p in found)
        if target in found and score > best_score:
            best, best_score = read, score
    if best is None:
        return None
    lines = best.lines[target]
    return Location(best.path, lines[min(occurrence, len(lines) - 1)], best.rendered)
