"""Progress (iterations, speed, time left) on stderr only, never in the log file.

The solvers' `progress` setting: None (default) a bar on a terminal and nothing otherwise (the glog lines show
progress there), True a bar, False nothing, "lines" a bar on a terminal and otherwise a plain line every
LINE_SECONDS (and one at the end), for logs that are files or pipes (`make train | tee`, CI). `busy()` does
the same for a step without iterations (compiling the C++ ops, building data): the elapsed time.

While the bar is up, the log handlers that write to the terminal print through tqdm.write, above the bar, so
the glog lines and the bar do not tear each other; file handlers are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

LINE_SECONDS = 15.0


def mode(setting) -> str:
    """'bar', 'lines' or 'off' for a `progress` setting (None, True, False or "lines"), given where stderr goes."""
    if setting is False:
        return "off"
    if setting is True:
        return "bar"
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if tty:
        return "bar"
    return "lines" if setting == "lines" else "off"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class _NoBar:
    def update(self, loss) -> None:
        pass


class _Bar:
    def __init__(self, bar):
        self.bar = bar

    def update(self, loss) -> None:
        self.bar.set_postfix_str(f"loss={float(loss):.4g}", refresh=False)
        self.bar.update(1)


class _Lines:
    """A plain line every `every` seconds and one at the end: `name: 300/1000 it (30%), 41.2 it/s, ETA 17 s`."""

    def __init__(self, name: str, start: int, stop: int, every: float = LINE_SECONDS):
        self.name, self.start, self.stop, self.every = name, start, stop, every
        self.n = start
        self.began = self.last = time.perf_counter()

    def update(self, loss) -> None:
        self.n += 1
        now = time.perf_counter()
        if now - self.last >= self.every or self.n >= self.stop:
            self.last = now
            print(self.line(loss, now), file=sys.stderr, flush=True)

    def line(self, loss, now: float) -> str:
        done, total = self.n - self.start, self.stop - self.start
        elapsed = now - self.began
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.name}: {self.n}/{self.stop} it ({100 * self.n // max(self.stop, 1)}%), {rate:.3g} it/s"
        if self.n < self.stop:
            text += f", ETA {_duration((total - done) / rate)}" if rate > 0 else ""
        else:
            text += f", done in {_duration(elapsed)}"
        return text + (f", loss={float(loss):.4g}" if loss is not None else "")


@contextlib.contextmanager
def progress_bar(solver, start: int, stop: int):
    shown = mode(solver.progress)
    if shown == "off" or stop <= start:
        yield _NoBar()
        return
    name = solver.net.name or "train"
    if shown == "lines":
        yield _Lines(name, start, stop)
        return
    from tqdm import tqdm

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


@contextlib.contextmanager
def busy(what: str, setting="lines", every: float = LINE_SECONDS, delay: float = 1.0):
    """A step without iterations: from `delay` seconds on, `what ... 12 s` on a terminal (redrawn), or
    `what: still running (30 s)` every `every` seconds elsewhere; then `what: done in ...` if it was shown."""
    shown = mode(setting)
    if shown == "off":
        yield
        return
    stop = threading.Event()
    began = time.perf_counter()
    said = []

    def tick():
        if stop.wait(delay):
            return
        said.append(True)
        if shown == "lines":
            while not stop.wait(every):
                print(f"{what}: still running ({_duration(time.perf_counter() - began)})", file=sys.stderr, flush=True)
            return
        from tqdm import tqdm

        with tqdm(total=None, desc=what, bar_format="{desc} ... {elapsed}", file=sys.stderr, leave=False) as bar:
            while not stop.wait(0.5):
                bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    from pipeline.glog import get_logger

    with _above_the_bar(get_logger()) if shown == "bar" else contextlib.nullcontext():
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
    if said:
        print(f"{what}: done in {_duration(time.perf_counter() - began)}", file=sys.stderr, flush=True)
