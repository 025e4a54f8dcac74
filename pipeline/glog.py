"""Log lines in glog's shape, so Caffe's log tools (parse_log.py, plot scripts) read our logs.

I1123 10:54:31.123456 12345 solver.py:240] Iteration 100, loss = 0.2
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

LOGGER_NAME = "pipeline"
_LEVELS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1e6)
        thread = threading.get_native_id() if record.thread == threading.get_ident() else record.thread
        where = f"{os.path.basename(record.pathname)}:{record.lineno}"
        prefix = f"{_LEVELS.get(record.levelno, 'I')}{stamp}.{micros:06d} {thread % 100000:>5} {where}] "
        return "\n".join(prefix + line for line in record.getMessage().splitlines() or [""])


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _EarlyRecords(logging.Handler):
    """Keeps the lines logged before the log file is known, for `setup_logging(log_file)` to write first."""

    def __init__(self, limit: int = 10000):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.limit:
            self.records.append(record)


def setup_logging(
    log_file: str | Path | None = None, stream=None, level: int = logging.INFO, keep_early: bool = False
) -> logging.Logger:
    """Log to the terminal (stderr, like glog) and, if given, to `log_file` (appended).

    `keep_early` (without a file) remembers the lines logged until the next call names the log file, which then
    starts with them, as a glog file holds every line of the run (`train` learns its file from the solver)."""
    logger = get_logger()
    early: list[logging.LogRecord] = []
    for handler in list(logger.handlers):
        if isinstance(handler, _EarlyRecords):
            early = handler.records
        logger.removeHandler(handler)
        handler.close()
    formatter = GlogFormatter()
    terminal = logging.StreamHandler(stream or sys.stderr)
    terminal.setFormatter(formatter)
    logger.addHandler(terminal)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a")
        file_handler.setFormatter(formatter)
        for record in early:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    elif keep_early:
        logger.addHandler(_EarlyRecords())
    logger.setLevel(level)
    logger.propagate = False
    return logger


def log_fatal(exc: BaseException, message: str | None = None) -> None:
    """Write a failure into the log files as glog's `F` line (Caffe's LOG(FATAL)/CHECK), at the place it was
    raised: `F1207 20:01:02.123456 12345 nets.py:123] message`. The terminal is left to the caller's own one-line
    error, so the message is not shown twice."""
    logger = get_logger()
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1] if frames else None
    text = message if message is not None else (str(exc) or type(exc).__name__)
    record = logger.makeRecord(
        logger.name,
        logging.CRITICAL,
        where.filename if where else "?",
        (where.lineno or 0) if where else 0,
        "%s",
        (text,),
        None,
    )
    for handler in files:
        handler.handle(record)
