"""Caffe-format training logs (real Caffe's and ours) to train and test tables per iteration.

Train table: NumIters, Seconds, LearningRate, one column per train net output (`Train net output #k: name = v`),
SmoothedLoss (the displayed `Iteration i (...), loss = v`), Segment. Test table: NumIters, Seconds, LearningRate,
one column per output of each test net (`name` for net #0, `name#k` for net #k), Segment. An output blob with
several elements (logged as several outputs of one name) gives `name`, `name[1]`, `name[2]`, ...

Default mode, values as the run had them:
* LearningRate of a row is the rate logged for that very iteration (`Iteration i, lr = x`, printed after the
  outputs), else the last one logged before it in the same segment, else NaN.
* Seconds: from the segment's "Solving" line to the row's first output line (when its numbers were known).
* A resumed or concatenated run (a second "Solving" line, or iterations going back) starts a new Segment; rows
  are never merged across segments.
* Only messages of the shapes above count (anchored at the message start), so lines of other threads or
  programs, progress bars and stack traces in between change nothing; a truncated, crashed or foreign log gives
  what could be read plus warnings, never an exception.

`compat="bvlc"`: BVLC's tools/extra/parse_log.py exactly, quirks included (see parse_bvlc.py).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.viz.glog_lines import HEADER_YEAR, Clock, file_year, open_lines, records_of_line, seconds_between
from pipeline.viz.logtable import Output, ParsedLog, Table

NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|(?i:nan|inf(?:inity)?))"
DISPLAY = re.compile(rf"^Iteration (\d+)(?: \([^)]*\))?, loss = ({NUM})\s*$")
LEARNING_RATE = re.compile(rf"^Iteration (\d+), lr = ({NUM})")
TESTING = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)")
OUTPUT = re.compile(rf"^(Train|Test) net output #(\d+): (\S+) = ({NUM})(?: \(\* ({NUM}) = {NUM} loss\))?\s*$")
TEST_SCORE = re.compile(rf"^Test score #(\d+): ({NUM})\s*$")  # Caffe before 2014: unnamed test outputs
SOLVING = re.compile(r"^Solving ?(.*)$")
DONE = re.compile(r"^Optimization (?:Done|stopped early)")
KEYWORDS = ("Iteration", "Train net", "Test net", "Test score", "Solving", "Optimization")
COMPAT_MODES = (None, "bvlc")


class LogError(PipelineError):
    """A log file that cannot be read at all (missing, a directory, no permission)."""


class _Rows:
    """The rows of one table, each for one (segment, iteration); outputs keep their order of first appearance."""

    def __init__(self):
        self.rows: list[dict] = []
        self.fallback_seconds: list[float] = []
        self.outputs: dict[str, Output] = {}
        self.current: dict | None = None
        self.key: tuple[int, int] | None = None
        self.seen: set = set()
        self.name_counts: dict[str, int] = {}

    def row(self, segment: int, iteration: int, cell, seconds: float) -> dict:
        """The open row if it is for this iteration and has no value for `cell` yet, else a new one."""
        if self.current is None or self.key != (segment, iteration) or cell in self.seen:
            self.current = {"NumIters": iteration, "Segment": segment}
            self.rows.append(self.current)
            self.fallback_seconds.append(seconds)
            self.key, self.seen, self.name_counts = (segment, iteration), set(), {}
        self.seen.add(cell)
        return self.current

    def add_output(self, segment, iteration, net, index, name, value, weight, seconds) -> None:
        row = self.row(segment, iteration, (net, index), seconds)
        base = name if net == 0 else f"{name}#{net}"
        occurrence = self.name_counts.get(base, 0)
        self.name_counts[base] = occurrence + 1
        column = base if occurrence == 0 else f"{base}[{occurrence}]"
        if column not in self.outputs:
            self.outputs[column] = Output(column, name, net, index, weight)
        row[column] = value
        row.setdefault("Seconds", seconds)

    def close(self) -> None:
        self.current = None


class _Parser:
    def __init__(self, year: int):
        self.clock = Clock(year)
        self.train, self.test = _Rows(), _Rows()
        self.segment = 0
        self.starts: dict[int, object] = {}
        self.first_time = None
        self.last_iter: int | None = None
        self.display_iter: int | None = None
        self.test_iter: int | None = None
        self.test_net = 0
        self.rates: dict[int, dict[int, float]] = {}
        self.glog_records = 0
        self.last_lineno = 0
        self.fatal: list[str] = []
        self.finished = False
        self.net_name: str | None = None
        self.used_fallback_start = False

    # ----- lines ---------------------------------------------------------------------------------------
    def feed_line(self, line: str, lineno: int) -> None:
        self.last_lineno = lineno
        records = records_of_line(line)
        if not records:
            header = HEADER_YEAR.match(line)
            if header and self.glog_records == 0:
                self.clock.year = int(header.group(1))
            return
        for record in records:
            message = record.message.lstrip()
            wanted = message.startswith(KEYWORDS)
            self.glog_records += 1
            if not wanted and record.level != "F" and self.first_time is not None:
                continue  # the bulk of a log: no need to read its time
            when = self.clock(record.stamp)
            if when is None:
                self.glog_records -= 1
                continue
            if self.first_time is None:
                self.first_time = when
            if record.level == "F" and len(self.fatal) < 3:
                self.fatal.append(f"line {lineno}: {message.strip()}")
            if wanted:
                self.feed_message(message, when)

    def feed_message(self, message: str, when) -> None:
        if m := OUTPUT.match(message):
            train = m.group(1) == "Train"
            iteration = self.display_iter if train else self.test_iter
            iteration = iteration if iteration is not None else (self.last_iter or 0)
            net = 0 if train else self.test_net
            weight = float(m.group(5)) if m.group(5) is not None else None
            rows = self.train if train else self.test
            value = float(m.group(4))
            rows.add_output(
                self.segment, iteration, net, int(m.group(2)), m.group(3), value, weight, self.seconds(when)
            )
        elif m := DISPLAY.match(message):
            self.display_iter = self.at(int(m.group(1)), when)
            row = self.train.row(self.segment, self.display_iter, "smoothed", self.seconds(when))
            row["SmoothedLoss"] = float(m.group(2))
        elif m := LEARNING_RATE.match(message):
            iteration = self.at(int(m.group(1)), when)
            self.rates.setdefault(self.segment, {})[iteration] = float(m.group(2))
        elif m := TESTING.match(message):
            self.test_iter, self.test_net = self.at(int(m.group(1)), when), int(m.group(2))
        elif m := TEST_SCORE.match(message):
            iteration = self.test_iter if self.test_iter is not None else (self.last_iter or 0)
            k = int(m.group(1))
            self.test.add_output(
                self.segment, iteration, 0, k, f"score{k}", float(m.group(2)), None, self.seconds(when)
            )
        elif m := SOLVING.match(message):
            if self.last_iter is not None or self.train.rows or self.test.rows:
                self.new_segment(when)
            self.starts[self.segment] = when
            self.net_name = m.group(1).strip() or self.net_name
        elif DONE.match(message):
            self.finished = True

    def at(self, iteration: int, when) -> int:
        """An iteration-bearing line: a lower iteration than the last one starts a new segment (resumed run)."""
        if self.last_iter is not None and iteration < self.last_iter:
            self.new_segment(when)
        self.last_iter = iteration
        return iteration

    def new_segment(self, when) -> None:
        self.segment += 1
        self.starts[self.segment] = when
        self.last_iter = self.display_iter = self.test_iter = None
        self.test_net = 0
        self.train.close()
        self.test.close()

    def seconds(self, when) -> float:
        start = self.starts.get(self.segment)
        if start is None:
            self.used_fallback_start = True
            start = self.first_time
        return seconds_between(start, when)

    # ----- tables --------------------------------------------------------------------------------------
    def rate(self, segment: int, iteration: int) -> float:
        rates = self.rates.get(segment)
        if not rates:
            return math.nan
        if iteration in rates:
            return rates[iteration]
        keys = sorted(rates)
        i = bisect.bisect_right(keys, iteration)
        return rates[keys[i - 1]] if i else math.nan

    def table(self, rows: _Rows, extra: tuple[str, ...]) -> Table:
        for row, fallback in zip(rows.rows, rows.fallback_seconds):
            row.setdefault("Seconds", fallback)
            row["LearningRate"] = self.rate(row["Segment"], row["NumIters"])
        present = [c for c in extra if any(c in row for row in rows.rows)]
        columns = ["NumIters", "Seconds", "LearningRate", *rows.outputs, *present, "Segment"]
        return Table(columns if rows.rows else [], rows.rows)

    def result(self, source: str, warnings: list[str]) -> ParsedLog:
        log = ParsedLog(
            source=source,
            train=self.table(self.train, ("SmoothedLoss",)),
            test=self.table(self.test, ()),
            warnings=warnings,
            train_outputs=list(self.train.outputs.values()),
            test_outputs=list(self.test.outputs.values()),
            net_name=self.net_name,
            finished=self.finished,
            segments=self.segment + 1 if self.train.rows or self.test.rows else 0,
        )
        log.warnings.extend(self.problems(log))
        return log

    def problems(self, log: ParsedLog) -> list[str]:
        name = Path(log.source).name
        if self.glog_records == 0:
            return [f"{name}: no glog-format lines (`I1123 10:54:31.123456 123 file.cpp:45] ...`): not a Caffe log"]
        found = []
        if log.empty:
            found.append(
                f"{name}: {self.glog_records} glog lines but no training progress "
                "('Iteration N ... loss', 'Train net output', 'Test net output')"
            )
        if self.fatal:
            found.append(f"{name}: the run died: " + "; ".join(self.fatal))
        elif not self.finished and not log.empty:
            found.append(
                f"{name}: the log ends (line {self.last_lineno}) before 'Optimization Done.': "
                "truncated, still running or killed; the tables hold what was logged"
            )
        if self.used_fallback_start and not log.empty:
            found.append(f"{name}: no 'Solving' line: Seconds count from the first log line")
        for phase, rows in (("train", self.train), ("test", self.test)):
            diverged = next(((r, c) for r in rows.rows for c in rows.outputs if not math.isfinite(r.get(c, 0))), None)
            if diverged:
                row, column = diverged
                found.append(f"{name}: {phase} {column} = {row[column]} at iteration {row['NumIters']} (diverged)")
            outputs = [set(r) & set(rows.outputs) for r in rows.rows]
            if len(outputs) >= 2 and outputs[-1] and outputs[-1] < outputs[-2]:
                found.append(f"{name}: the last {phase} row is incomplete (the log stops inside its output lines)")
        return found


def parse_lines(
    lines: Iterable[str], *, compat: str | None = None, year: int | None = None, source: str = "<lines>"
) -> ParsedLog:
    """Parse log lines (a file's or a list). `year`: for lines that carry none (default: this year)."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}: use one of {COMPAT_MODES}")
    year = year if year is not None else file_year(None)
    if compat == "bvlc":
        from pipeline.viz.parse_bvlc import parse_bvlc

        return parse_bvlc(lines, year, source)
    parser = _Parser(year)
    for lineno, line in enumerate(lines, 1):
        parser.feed_line(line, lineno)
    return parser.result(source, [])


def parse_log(path: str | Path, *, compat: str | None = None, year: int | None = None) -> ParsedLog:
    """Parse a log file. Bad content gives warnings (`.warnings`) and partial tables; an unreadable file
    raises LogError. The year of lines without one: the glog file header's, else `year`, else the file's
    (mtime; ctime in compat="bvlc" mode, as BVLC's tool takes it)."""
    path = Path(path)
    try:
        lines, warnings = open_lines(path)
        if year is None:
            year = _bvlc_year(path) if compat == "bvlc" else file_year(path)
        log = parse_lines(lines, compat=compat, year=year, source=str(path))
    except IsADirectoryError:
        raise LogError(f"{path} is a directory, not a log file") from None
    except OSError as exc:
        raise LogError(f"cannot read {path}: {exc.strerror or exc}") from None
    log.warnings[:0] = warnings
    return log


def _bvlc_year(path: Path) -> int:
    import datetime as dt

    return dt.datetime.fromtimestamp(path.stat().st_ctime).year
