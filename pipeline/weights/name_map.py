"""`--weights-map`: load caffemodels into layers of other names (what the 2017 study's load_model_weights.py did).

A map is a comma-separated list of rules (or map files), each `[FILE:]OLD=NEW`:

    conv1=t_conv1,conv2=t_conv2          the layer conv1 of every weights file fills the net's t_conv1
    *=t_*                                every layer gets the prefix t_ (`*` is the rest of the name)
    conv*=student_conv*                  a prefix rule for some layers only
    a.caffemodel:*=t1_*,b.caffemodel:*=t2_*
                                         two teachers with the same layer names into one net: a rule with a
                                         FILE applies only to the weights file of that path or file name
    maps/teachers.txt                    a map file (any item without `=`): one `[FILE:]OLD NEW` or
                                         `[FILE:]OLD=NEW` per line, `#` comments

The first matching rule wins (exact names before patterns, file-specific rules before general ones); a layer no
rule names keeps its name. Every weights file must fill at least one layer, and every exact rule must match a
layer of some file it applies to: a map that does nothing is an error, not silence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import WeightsError
from pipeline.glog import get_logger


@dataclass(frozen=True)
class Rule:
    old: str
    new: str
    file: str | None = None  # a path or file name; None: every weights file
    origin: str = "--weights-map"

    @property
    def is_pattern(self) -> bool:
        return "*" in self.old

    def applies_to(self, path: str | Path) -> bool:
        if self.file is None:
            return True
        path = Path(path)
        return self.file in (str(path), path.name) or Path(self.file).resolve() == path.resolve()

    def rename(self, name: str) -> str | None:
        if not self.is_pattern:
            return self.new if name == self.old else None
        head, _, tail = self.old.partition("*")
        if not (name.startswith(head) and name.endswith(tail) and len(name) >= len(head) + len(tail)):
            return None
        rest = name[len(head) : len(name) - len(tail)]
        return self.new.replace("*", rest)


def _parse_rule(text: str, origin: str) -> Rule:
    left, _, new = text.partition("=")
    file, colon, old = left.rpartition(":")
    if not colon:
        file, old = None, left
    old, new = old.strip(), new.strip()
    if not old or not new:
        raise WeightsError(f"{origin}: rule '{text}' must be [FILE:]OLD=NEW with both names given")
    if old.count("*") > 1 or new.count("*") > 1 or ("*" in new and "*" not in old):
        raise WeightsError(
            f"{origin}: rule '{text}': use at most one '*' on each side, and on the right only with one on the left"
        )
    return Rule(old, new, file.strip() or None if file is not None else None, origin)


def read_map_file(path: str | Path) -> list[Rule]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise WeightsError(f"weights map '{path}': cannot read: {exc.strerror or exc}") from None
    rules = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        origin = f"{path}:{number}"
        if "=" not in line:
            parts = line.split()
            if len(parts) != 2:
                raise WeightsError(f"{origin}: expected '[FILE:]OLD NEW' or '[FILE:]OLD=NEW', got '{line}'")
            line = "=".join(parts)
        rules.append(_parse_rule(line, origin))
    return rules


def parse_weights_map(specs: str | list[str] | None) -> WeightsMap:
    """Rules from `--weights-map` values (each comma-separated; an item without '=' is a map file)."""
    if isinstance(specs, str):
        specs = [specs]
    rules: list[Rule] = []
    for spec in specs or []:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            rules.extend([_parse_rule(item, "--weights-map")] if "=" in item else read_map_file(item))
    return WeightsMap(rules)


@dataclass
class WeightsMap:
    rules: list[Rule] = field(default_factory=list)
    used: set[Rule] = field(default_factory=set)

    def for_file(self, path: str | Path) -> Renaming:
        """The renaming for one weights file, in the order rules are tried."""
        mine = [r for r in self.rules if r.applies_to(path)]
        ordered = sorted(mine, key=lambda r: (r.is_pattern, r.file is None))
        return Renaming(ordered, self.used)

    def unused_exact_rules(self) -> list[Rule]:
        return [r for r in self.rules if not r.is_pattern and r not in self.used]

    def __bool__(self) -> bool:
        return bool(self.rules)


class Renaming(Mapping):
    """File layer name -> net layer name, as `pipeline.weights.io.copy_layer_blobs(rename=...)` reads it."""

    def __init__(self, rules: list[Rule], used: set[Rule]):
        self.rules, self.used = rules, used

    def __getitem__(self, name: str) -> str:
        for rule in self.rules:
            new = rule.rename(name)
            if new is not None:
                self.used.add(rule)
                return new
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(r.old for r in self.rules if not r.is_pattern)

    def __len__(self) -> int:
        # Patterns count too: copy_layer_blobs treats an empty mapping as "no renaming".
        return len(self.rules)


def load_weights(solver, paths, weights_map: WeightsMap | None = None) -> dict[str, list[str]]:
    """`--weights a,b --weights-map ...` into a solver's train net and test nets (Caffe's CopyLayers, renamed).

    Returns {path: layers filled in the train net}. A file that fills no layer, or an exact rule that matched no
    layer of any file, is a WeightsError."""
    from pipeline.weights.io import copy_weights

    log = get_logger()
    weights_map = weights_map or WeightsMap()
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p]
    filled = {}
    for path in paths:
        rename = weights_map.for_file(path)
        for net in [solver.net, *getattr(solver, "test_nets", [])]:
            report = copy_weights(net, path, rename)
            if net is solver.net:
                filled[str(path)] = report.copied
        if not filled[str(path)]:
            hint = " (check --weights-map: e.g. '*=t_*' for a teacher under the prefix t_)"
            raise WeightsError(
                f"{path}: fills no layer of net '{solver.net.name}': none of its layer names "
                f"{_sample(report.ignored)} is a layer of the net{hint if not weights_map else ''}"
            )
        log.info("Copied %d layers from %s: %s", len(filled[str(path)]), path, ", ".join(filled[str(path)]))
    nowhere = [r for r in weights_map.used if not r.is_pattern and r.new not in solver.net.layer_by_name]
    if nowhere:
        shown = ", ".join(f"{r.old}={r.new} ({r.origin})" for r in nowhere)
        raise WeightsError(f"weights map rules name no layer of net '{solver.net.name}': {shown}")
    unused = weights_map.unused_exact_rules()
    if unused:
        shown = ", ".join(f"{r.file + ':' if r.file else ''}{r.old}={r.new} ({r.origin})" for r in unused)
        raise WeightsError(f"weights map rules matched no layer of any weights file: {shown}")
    if hasattr(solver, "_share"):
        solver._share()
    return filled


def _sample(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
