"""The prefetch thread: batches wait in a bounded queue, the consumer's waiting is measured, errors surface."""

import threading
import time

import numpy as np
import pytest

from pipeline.data.errors import LayerDataError
from pipeline.data.prefetch import Prefetcher, data_layers, data_wait_seconds
from pipeline.errors import DataError

from .helpers import data_layer, data_net, make_db


class Counter:
    def __init__(self, delay=0.0, fail_at=None):
        self.calls, self.delay, self.fail_at = 0, delay, fail_at
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            n = self.calls
        if n == self.fail_at:
            raise DataError("record 3 is corrupt")
        time.sleep(self.delay)
        return (np.full(2, n, np.float32),)


def wait_until(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.005)
    return condition()


def test_ready_batches_do_not_block_and_queue_is_bounded():
    produce = Counter()
    prefetcher = Prefetcher(produce, depth=3)
    assert wait_until(lambda: prefetcher.ready() == 3)
    time.sleep(0.05)
    assert produce.calls <= 4  # 3 queued + at most 1 waiting to be queued
    for expected in (1, 2, 3):
        assert prefetcher.next()[0][0].item() == expected
    assert prefetcher.waits == 0 and prefetcher.wait_seconds == 0.0 and prefetcher.batches == 3
    prefetcher.close()


def test_wait_counter_measures_a_slow_producer():
    prefetcher = Prefetcher(Counter(delay=0.05), depth=2)
    start = time.perf_counter()
    for _ in range(4):
        prefetcher.next()
    elapsed = time.perf_counter() - start
    assert prefetcher.waits >= 3
    assert 0.12 <= prefetcher.wait_seconds <= elapsed + 1e-3
    prefetcher.close()


def test_producer_errors_reach_the_consumer_in_order():
    prefetcher = Prefetcher(Counter(fail_at=3), depth=4)
    prefetcher.next()
    prefetcher.next()
    with pytest.raises(DataError, match="record 3 is corrupt"):
        prefetcher.next()
    with pytest.raises(DataError, match="record 3 is corrupt"):
        prefetcher.next()


def test_close_stops_the_thread():
    prefetcher = Prefetcher(Counter(), depth=1)
    assert wait_until(lambda: prefetcher.ready() == 1)
    prefetcher.close()
    assert not prefetcher._thread.is_alive()


def test_net_wait_seconds_and_data_layers(tmp_path):
    make_db(tmp_path / "db", count=16)
    net = data_net(data_layer(tmp_path / "db", 4, extra="prefetch: 2"))
    layer = net.layer("mnist")
    assert data_layers(net) == [layer] and layer.prefetcher.depth == 2
    assert wait_until(lambda: layer.prefetcher.ready() == 2)
    net.forward()
    assert data_wait_seconds(net) == 0.0  # the batch was ready
    layer.prefetcher.wait_seconds = 0.25
    assert data_wait_seconds(net) == 0.25
    layer.close()
    with pytest.raises(LayerDataError, match="layer 'mnist' \\(Data\\)"):
        for _ in range(4):
            net.forward()


def test_layer_garbage_collection_stops_its_thread(tmp_path):
    make_db(tmp_path / "db", count=4)
    net = data_net(data_layer(tmp_path / "db", 2))
    thread = net.layer("mnist").prefetcher._thread
    del net
    import gc

    gc.collect()
    assert wait_until(lambda: not thread.is_alive())
