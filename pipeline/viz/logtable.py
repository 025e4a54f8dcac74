"""The tables a training log becomes, and their CSV and JSON forms.

A Table has ordered columns and rows (dicts; a missing cell is an absent key). CSV cells are Python's `str` of
the number (what BVLC's parse_log.py writes, so its files compare byte for byte), empty for a missing cell;
JSON uses pandas' "split" layout ({"columns": [...], "data": [[...]]}) with null for missing or NaN cells.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

LOSS_HINTS = ("loss",)
ACCURACY_HINTS = ("acc", "top1", "top5", "top-1", "top-5", "precision", "recall")


@dataclass
class Table:
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[float]:
        """One column as floats, NaN where a row has no value."""
        return [float(row.get(name, math.nan)) for row in self.rows]

    def add_column(self, name: str) -> None:
        if name not in self.columns:
            self.columns.append(name)

    def write_csv(self, path: str | Path, delimiter: str = ",") -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(self.columns)
            for row in self.rows:
                writer.writerow(["" if c not in row else str(row[c]) for c in self.columns])
        return path

    def to_json(self) -> dict:
        return {"columns": list(self.columns), "data": [[_cell(row.get(c)) for c in self.columns] for row in self.rows]}


def _cell(value):
    """JSON has no NaN or infinity: those cells become null, like missing ones."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


@dataclass
class Output:
    """One net output as the log names it: `Train net output #index: name = v (* loss_weight = w*v loss)`."""

    column: str
    name: str
    net: int = 0
    index: int = 0
    loss_weight: float | None = None

    @property
    def kind(self) -> str:
        return series_kind(self.name, self.loss_weight)


def series_kind(name: str, loss_weight: float | None = None) -> str:
    """'loss', 'accuracy' or 'other' for an output, from its loss weight and its name."""
    lower = name.lower()
    if loss_weight is not None or any(h in lower for h in LOSS_HINTS):
        return "loss"
    if any(h in lower for h in ACCURACY_HINTS):
        return "accuracy"
    return "other"


@dataclass
class ParsedLog:
    source: str
    train: Table
    test: Table
    warnings: list[str] = field(default_factory=list)
    train_outputs: list[Output] = field(default_factory=list)
    test_outputs: list[Output] = field(default_factory=list)
    compat: str | None = None
    net_name: str | None = None
    finished: bool = False
    segments: int = 0

    @property
    def empty(self) -> bool:
        return not self.train.rows and not self.test.rows

    def outputs(self, phase: str) -> list[Output]:
        return self.train_outputs if phase == "train" else self.test_outputs

    def table(self, phase: str) -> Table:
        return self.train if phase == "train" else self.test

    def summary(self) -> str:
        parts = [f"{len(self.train)} train rows", f"{len(self.test)} test rows"]
        if self.segments > 1:
            parts.append(f"{self.segments} segments (resumed or concatenated runs)")
        return f"{self.source}: " + ", ".join(parts)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "compat": self.compat,
            "net": self.net_name,
            "finished": self.finished,
            "segments": self.segments,
            "warnings": list(self.warnings),
            "outputs": {phase: [vars(o).copy() for o in self.outputs(phase)] for phase in ("train", "test")},
            "train": self.train.to_json(),
            "test": self.test.to_json(),
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), allow_nan=False) + "\n")
        return path

    def write_csv(self, outdir: str | Path, delimiter: str = ",") -> list[Path]:
        """`<outdir>/<log name>.train` and `.test`, as BVLC's parse_log.py names them (empty tables are skipped)."""
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        base = Path(self.source).name
        return [
            self.table(phase).write_csv(outdir / f"{base}.{phase}", delimiter)
            for phase in ("train", "test")
            if self.table(phase).rows
        ]
