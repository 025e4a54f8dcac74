"""The transferability experiment's pieces: class splits, frozen copies stay put, the table and the figure."""

from __future__ import annotations

import numpy as np

from bench import transferability as tr


def fake_data(rows=50, side=16, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (rows, side, side)).astype(np.uint8)
    labels = (np.arange(rows) % 10).astype(np.uint8)
    return {"train": (images, labels), "test": (images[:20], labels[:20])}


def test_task_keeps_its_classes_and_renumbers_them():
    split = tr.task(fake_data(), range(5, 10), seed=1)
    assert set(split.train_y) == {0, 1, 2, 3, 4} and len(split.train_x) == 25 and len(split.test_x) == 10
    assert split.train_x.shape[1:] == (1, 16, 16) and split.train_x.max() < 1


def test_frozen_layers_are_copied_bit_for_bit_and_fine_tuned_ones_move():
    split = tr.task(fake_data(), range(5))
    settings = tr.Settings(iters=3, batch=4, test_batch=4, base_lr=0.05)
    _, base = tr.train(split, settings, seed=1)
    init = {name: base[name] for name in ("conv1", "conv2")}
    _, frozen = tr.train(split, settings, seed=2, init=init, frozen=("conv1", "conv2"))
    _, tuned = tr.train(split, settings, seed=2, init=init)
    for name in ("conv1", "conv2"):
        assert all(np.array_equal(a, b) for a, b in zip(frozen[name], base[name]))
        assert not np.array_equal(tuned[name][0], base[name][0])
    assert not np.array_equal(frozen["ip1"][0], base["ip1"][0])


def test_table_and_plot(tmp_path):
    rows = [{"experiment": "baseB", "n": 0, "seed": 1, "accuracy": 0.9}]
    rows += [
        {"experiment": k, "n": n, "seed": s, "accuracy": 0.8 + 0.01 * n + 0.001 * s}
        for k, n in tr.jobs_for()
        for s in (1, 2)
    ]
    table = tr.markdown_table(rows)
    assert "| 0 (baseB) | 0.9000 |" in table and "| 4 (ip2) | 0.8415 ±0.0005 |" in table
    tr.plot(rows, tmp_path / "f.png", "test")
    assert (tmp_path / "f.png").stat().st_size > 10_000
