"""The terminal progress bar (iterations, speed, time left), on stderr only, never in the log file.

While the bar is up, the log handlers that write to the terminal print through tqdm.write, above the bar, so
the glog lines and the bar do not tear each other; file handlers are left alone. Off when stderr is not a
terminal, or with `progress=False`.
"""

from __future__ import annotations

import contextlib
import logging
import sys


class _NoBar:
    def update(self, loss) -> None:
        pass


class _Bar:
    def __init__(self, bar):
        self.bar = bar

    def update(self, loss) -> None:
        self.bar.set_postfix_str(f"loss={float(loss):.4g}", refresh=False)
        self.bar.update(1)


@contextlib.contextmanager
def progress_bar(solver, start: int, stop: int):
    enabled = solver.progress
    if enabled is None:
        enabled = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if not enabled or stop <= start:
        yield _NoBar()
        return
    from tqdm import tqdm

    name = solver.net.name or "train"
    with (
        _above_the_bar(solver.log),
        tqdm(total=stop, initial=start, unit="it", desc=name, file=sys.stderr, dynamic_ncols=True, leave=False) as bar,
    ):
        yield _Bar(bar)


class _TqdmStream:
    """What a terminal log handler writes to while the bar is up."""

    def write(self, text: str) -> None:
        from tqdm import tqdm

        text = text.rstrip("\n")
        if text:
            tqdm.write(text, file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def _above_the_bar(logger: logging.Logger):
    swapped = []
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout):
            swapped.append((handler, handler.setStream(_TqdmStream())))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)
