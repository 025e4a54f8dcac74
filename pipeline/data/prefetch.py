"""Background prefetching, as Caffe's BasePrefetchingDataLayer: a thread keeps up to `prefetch` batches ready.

The consumer's `next()` takes a ready batch; when none is ready it blocks, and the seconds it blocked are added
to `wait_seconds`. `data_wait_seconds(net)` sums them over a net's data layers, so a trainer can report the share
of its wall time spent waiting for data (`wait / elapsed`). An exception in the producer is re-raised by `next()`.

The producer must not hold a reference to the layer that owns the prefetcher: the layer closes its prefetcher
when it is garbage-collected, which a reference from the running thread would prevent.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np
import torch

from pipeline.errors import DataError
from pipeline.glog import get_logger

_LIVE: weakref.WeakSet[Prefetcher] = weakref.WeakSet()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Runs `produce()` (returning a tuple of numpy arrays) on a daemon thread; `next()` returns torch tensors."""

    #: Caffe logs "Waiting for data" once every this many blocking waits.
    LOG_EVERY = 1000

    def __init__(self, produce: Callable[[], tuple[np.ndarray, ...]], depth: int = 4, name: str = "prefetch"):
        self.depth = max(1, int(depth))
        self.name = name
        self.wait_seconds = 0.0
        self.waits = 0
        self.batches = 0
        #: Seconds the thread spent making batches (its load; compare with the consumer's time per batch).
        self.produce_seconds = 0.0
        #: Set by the owner when batches go to a CUDA device: the thread then pins them for an async copy.
        self.pin_memory = False
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        _LIVE.add(self)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                item = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in self._produce())
                if self.pin_memory:
                    item = tuple(t.pin_memory() for t in item)
            except BaseException as exc:  # handed to the consumer, who re-raises it
                item = _Failure(exc)
            self.produce_seconds += time.perf_counter() - start
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return

    def next(self) -> tuple[torch.Tensor, ...]:
        if self._error is not None:
            raise self._error
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            item = self._wait()
        if isinstance(item, _Failure):
            self._error = item.error
            raise item.error
        self.batches += 1
        return item

    def _wait(self):
        start = time.perf_counter()
        if self.waits % self.LOG_EVERY == 0:
            get_logger().info("Waiting for data")
        self.waits += 1
        try:
            while True:
                try:
                    return self._queue.get(timeout=0.5)
                except queue.Empty:
                    if not self._thread.is_alive():
                        raise DataError(f"{self.name}: the prefetch thread has stopped") from None
        finally:
            self.wait_seconds += time.perf_counter() - start

    def ready(self) -> int:
        """Batches waiting in the queue now."""
        return self._queue.qsize()

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


@atexit.register
def _close_all() -> None:
    for prefetcher in list(_LIVE):
        prefetcher.close()


def data_layers(module: torch.nn.Module) -> list:
    """The modules of `module` (a Net, or a layer) that prefetch."""
    return [m for m in module.modules() if isinstance(getattr(m, "prefetcher", None), Prefetcher)]


def data_wait_seconds(module: torch.nn.Module) -> float:
    """Total seconds the consumer has waited for batches from the data layers of `module`."""
    return sum(layer.prefetcher.wait_seconds for layer in data_layers(module))
