"""compat="bvlc": the tables of BVLC Caffe's tools/extra/parse_log.py, quirks and all, to compare with its CSVs.

Its behaviour (from reading the tool; our own code):
* Nothing before the first line containing "Solving" is read; Seconds count from that line, in a year taken
  from the file's ctime. Lines are read only from the first one containing "Iteration N" on, and every line
  containing "Iteration N" anywhere sets the current iteration (a float).
* LearningRate of a row is the last `lr = x` seen before the row's first output line, so train rows lag one
  display interval; then row 0's LearningRate is overwritten by row 1's.
* A row is started by an output line whose iteration differs from the open row's; outputs are keyed by name
  (a second test net or a repeated name overwrites). The first row is stored when the second starts; every later
  row when it has as many cells as the first, so an unfinished last row, or a lone first row, is dropped.
* Output values match `[.0-9eE+-]+` only: `nan` is not read; `-nan` or a foreign line makes the tool stop with
  an error, where this mode skips the line and says so.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable

from pipeline.viz.logtable import Output, ParsedLog, Table

ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
LOSS_WEIGHT = re.compile(r"\(\* (\S+) = ")
FIXED = ("NumIters", "Seconds", "LearningRate")


def line_datetime(line: str, year: int) -> dt.datetime | None:
    """The tool's timestamp reading: month and day from the first word, clock from the second."""
    try:
        words = line.strip().split()
        month, day = int(words[0][1:3]), int(words[0][3:])
        stamp = words[1]
        dot = stamp.rfind(".")
        hour, minute, second = (int(x) for x in stamp[:dot].split(":")[:3])
        return dt.datetime(year, month, day, hour, minute, second, int(stamp[dot + 1 :]))
    except (ValueError, IndexError):
        return None


class _Table:
    def __init__(self, regex: re.Pattern):
        self.regex = regex
        self.rows: list[dict] = []
        self.row: dict | None = None
        self.outputs: dict[str, Output] = {}

    def feed(self, line: str, iteration: float, seconds: float, rate: float) -> str | None:
        """One line, as the tool's parse_line_for_net_output; returns a complaint for an unreadable value."""
        match = self.regex.search(line)
        if match:
            try:
                value = float(match.group(3))
            except ValueError:
                return f"unreadable value {match.group(3)!r}"
            if not self.row or self.row["NumIters"] != iteration:
                if self.row:
                    self.rows.append(self.row)
                self.row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": rate}
            name = match.group(2)
            self.row[name] = value
            if name not in self.outputs:
                weight = LOSS_WEIGHT.search(line, match.end())
                self.outputs[name] = Output(
                    name, name, 0, int(match.group(1)), _float(weight.group(1) if weight else None)
                )
        if self.row and self.rows and len(self.row) == len(self.rows[0]):
            self.rows.append(self.row)
            self.row = None
        return None

    def table(self, warnings: list[str], phase: str) -> Table:
        if len(self.rows) > 1:
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        if not self.rows:
            return Table()
        columns = list(self.rows[0])
        for row in self.rows:
            extra = [c for c in row if c not in columns]
            if extra:
                warnings.append(f"{phase} rows have columns the first row lacks {extra}: BVLC's tool fails to write")
                columns.extend(extra)
        return Table(columns, self.rows)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def parse_bvlc(lines: Iterable[str], year: int, source: str) -> ParsedLog:
    warnings: list[str] = []
    numbered = enumerate(lines, 1)
    start = None
    for lineno, line in numbered:
        if "Solving" in line:
            start = line_datetime(line, year)
            if start is None:
                warnings.append(f"line {lineno}: the 'Solving' line has no glog timestamp: BVLC's tool stops here")
            break
    train, test = _Table(TRAIN_OUTPUT), _Table(TEST_OUTPUT)
    finished = False
    if start is None:
        if not warnings:
            warnings.append(f"{source}: no 'Solving' line: BVLC's parse_log.py reads nothing from this log")
        numbered = iter(())
    iteration, rate = -1.0, math.nan
    skipped = 0
    for lineno, line in numbered:
        finished = finished or "Optimization Done" in line
        match = ITERATION.search(line)
        if match:
            iteration = float(match.group(1))
        if iteration == -1:
            continue
        when = line_datetime(line, year)
        if when is None:
            skipped += 1
            if skipped <= 3:
                warnings.append(f"line {lineno}: not a glog line: BVLC's tool stops with an error here (skipped)")
            continue
        seconds = (when - start).total_seconds()
        match = LEARNING_RATE.search(line)
        if match:
            rate = _float(match.group(1)) if _float(match.group(1)) is not None else rate
        for table in (train, test):
            complaint = table.feed(line, iteration, seconds, rate)
            if complaint:
                warnings.append(f"line {lineno}: {complaint}: BVLC's tool stops with an error here (skipped)")
    if skipped > 3:
        warnings.append(f"{skipped} lines in all were not glog lines")
    train_table, test_table = train.table(warnings, "train"), test.table(warnings, "test")
    return ParsedLog(
        source=source,
        train=train_table,
        test=test_table,
        warnings=warnings,
        train_outputs=[train.outputs[c] for c in train_table.columns if c not in FIXED and c in train.outputs],
        test_outputs=[test.outputs[c] for c in test_table.columns if c not in FIXED and c in test.outputs],
        compat="bvlc",
        finished=finished,
        segments=1 if train_table.rows or test_table.rows else 0,
    )
