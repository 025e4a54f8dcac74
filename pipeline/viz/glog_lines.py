"""Reading glog records: `I1123 10:54:31.123456 12345 file.cpp:239] message` (or `I20231123 ...` with a year).

Any file can be read: bytes that are not UTF-8 are replaced, a carriage return (progress bars) ends a line like
a newline does, and one physical line may hold several records when two writers interleaved without a newline.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = re.compile(r"([IWEF])(\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s+(\d+) ([^\s\]]+)\](?: |$)")
# glog's file header (when logging to a file rather than stderr): the only place an old log states its year.
HEADER_YEAR = re.compile(r"^Log file created at: (\d{4})/\d\d/\d\d ")
BINARY_PROBE = 1 << 16


@dataclass(frozen=True)
class Record:
    level: str
    prefix: re.Match
    message: str

    @property
    def stamp(self) -> tuple[int | None, int, int, int, int, int, int]:
        """(year or None when the line has none, month, day, hour, minute, second, microsecond)."""
        year = self.prefix.group(2)
        return (int(year) if year else None, *map(int, self.prefix.group(3, 4, 5, 6, 7, 8)))


def records_of_line(line: str) -> list[Record]:
    """The glog records on one line: none for a non-glog line, several when writers interleaved."""
    matches = list(PREFIX.finditer(line))
    if len(matches) == 1:
        m = matches[0]
        return [Record(m.group(1), m, line[m.end() :].rstrip())]
    return [
        Record(m.group(1), m, line[m.end() : matches[i + 1].start() if i + 1 < len(matches) else len(line)].rstrip())
        for i, m in enumerate(matches)
    ]


def open_lines(path: str | Path) -> tuple[Iterator[str], list[str]]:
    """A line iterator over a file (streamed) and the warnings found on its first bytes."""
    path = Path(path)
    warnings = []
    with path.open("rb") as f:
        head = f.read(BINARY_PROBE)
    if b"\0" in head:
        warnings.append(f"{path.name} looks like a binary file, not a text log")

    def lines() -> Iterator[str]:
        with path.open(encoding="utf-8", errors="replace", newline=None) as f:
            for line in f:
                yield line.rstrip("\n")

    return lines(), warnings


def safe_datetime(
    year: int, month: int, day: int, hour: int, minute: int, second: int, micro: int
) -> dt.datetime | None:
    try:
        return dt.datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        if (month, day) == (2, 29):  # a leap day in a guessed year that is not a leap year: keep time running
            return dt.datetime(year, 2, 28, hour, minute, second, micro) + dt.timedelta(days=1)
        return None


class Clock:
    """glog timestamps to datetimes. Without a year in the line, the year is the file header's or a guess,
    counted on when the month goes back (a run across New Year), so seconds stay right across day and year ends."""

    def __init__(self, year: int):
        self.year = year
        self.last_month: int | None = None

    def __call__(self, stamp: tuple) -> dt.datetime | None:
        year, month = stamp[0], stamp[1]
        if year is not None:
            self.year = year
        elif self.last_month is not None and month < self.last_month:
            self.year += 1
        when = safe_datetime(self.year, *stamp[1:])
        if when is not None:
            self.last_month = month
        return when


def file_year(path: str | Path | None) -> int:
    """The year a log was last written (a guess for logs whose lines carry no year)."""
    if path is not None:
        try:
            return dt.datetime.fromtimestamp(Path(path).stat().st_mtime).year
        except OSError:
            pass
    return dt.date.today().year


def seconds_between(start: dt.datetime, when: dt.datetime) -> float:
    return (when - start).total_seconds()
