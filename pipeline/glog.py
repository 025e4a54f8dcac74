"""Log lines in glog's shape, so Caffe's log tools (parse_log.py, plot scripts) read our logs.

I1123 10:54:31.123456 12345 solver.py:240] Iteration 100, loss = 0.2
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
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


def setup_logging(log_file: str | Path | None = None, stream=None, level: int = logging.INFO) -> logging.Logger:
    """Log to the terminal (stderr, like glog) and, if given, to `log_file` (appended)."""
    logger = get_logger()
    for handler in list(logger.handlers):
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
        logger.addHandler(file_handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
