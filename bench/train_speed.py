"""Training speed: our Solver against a hand-written PyTorch loop, same net, batch and data, and Caffe's figures.

    .venv/bin/python bench/train_speed.py [--repeats 3] [--caffe-blas]

Runs the real Caffe speed cases of ../shared/caffe-reference/speed (LeNet 500 iterations, CIFAR10-quick 200,
HDF5 data, no test net, display 100), alternating ours and the hand-written loop. Targets (issue 3): ours at
most 1.1x slower than the hand-written loop; twice Caffe's iterations/s. `--caffe-blas` also times the
bit-exact mode (pipeline/exact/caffe_blas.py), which has no target but Caffe's own numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine  # noqa: E402
from bench.net_overhead import ChannelsLast, HandCifarQuick, HandLeNet  # noqa: E402
from pipeline.exact.caffe_blas import exact_blas  # noqa: E402
from pipeline.glog import setup_logging  # noqa: E402
from pipeline.solvers import build_solver, read_solver_param  # noqa: E402

SPEED = Path(__file__).resolve().parents[2] / "shared" / "caffe-reference" / "speed"
CASES = {"lenet_train_500": HandLeNet, "cifar10_quick_train_200": HandCifarQuick}


def ours(folder: Path, exact: bool = False) -> float:
    """Seconds from the first to the last iteration of our solver (set-up excluded, as Caffe's log timing);
    `exact`: in the bit-exact mode."""
    if exact:
        with exact_blas(True):
            return ours(folder)
    os.chdir(folder)
    param, _ = read_solver_param("solver.prototxt")
    param.snapshot_after_train = False
    param.snapshot = 0
    solver = build_solver(param, solver_path=str(folder / "solver.prototxt"), progress=False)
    start = time.perf_counter()
    solver.solve()
    return time.perf_counter() - start


def hand(
    folder: Path, model_cls, iterations: int, batch: int, lr: float, momentum: float, decay: float, nhwc: bool
) -> float:
    """The plain PyTorch loop; `nhwc`: with the NHWC convolutions our Convolution layer uses on the CPU."""
    path = (folder / (folder / "train.txt").read_text().split()[0]).resolve()
    with h5py.File(path, "r") as f:
        data, label = torch.from_numpy(np.asarray(f["data"])), torch.from_numpy(np.asarray(f["label"])).long()
    model = ChannelsLast(model_cls()) if nhwc else model_cls()
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=decay)
    start = time.perf_counter()
    for i in range(iterations):
        index = torch.arange(i * batch, (i + 1) * batch) % data.shape[0]
        optimiser.zero_grad()
        model(data[index], label[index]).backward()
        optimiser.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--caffe-blas", action="store_true", help="also time the bit-exact mode")
    args = parser.parse_args()
    if not SPEED.exists():
        print(f"{SPEED} not found: this benchmark needs ../shared")
        return 0
    setup_logging(level=logging.WARNING)
    caffe = json.loads((SPEED / "speed.json").read_text())["caffe_train"]
    print(f"training iterations/s, median of {args.repeats} alternating runs; {machine()}")
    worst_ratio, worst_vs_caffe = 0.0, float("inf")
    for case, model_cls in CASES.items():
        folder = SPEED / case
        param, _ = read_solver_param(folder / "solver.prototxt")
        iterations = param.max_iter
        net_text = (folder / "net.prototxt").read_text()
        batch = int(net_text.split("batch_size:")[1].split()[0])
        ours_s, hand_s, plain_s, exact_s = [], [], [], []
        rule = (param.base_lr, param.momentum, param.weight_decay)
        for _ in range(args.repeats):
            ours_s.append(ours(folder))
            hand_s.append(hand(folder, model_cls, iterations, batch, *rule, nhwc=True))
            plain_s.append(hand(folder, model_cls, iterations, batch, *rule, nhwc=False))
            if args.caffe_blas:
                exact_s.append(ours(folder, exact=True))
        ours_ips, hand_ips = iterations / statistics.median(ours_s), iterations / statistics.median(hand_s)
        plain_ips = iterations / statistics.median(plain_s)
        caffe_ips = caffe[case]["median_iterations_per_second"]
        ratio = hand_ips / ours_ips
        worst_ratio, worst_vs_caffe = max(worst_ratio, ratio), min(worst_vs_caffe, ours_ips / caffe_ips)
        print(
            f"{case:24s} ours {ours_ips:7.1f} it/s  hand-written (NHWC convolutions, as ours) {hand_ips:7.1f} it/s "
            f"(ours {ratio:.3f}x slower)  plain hand-written (NCHW) {plain_ips:7.1f} it/s  "
            f"Caffe 1.0 {caffe_ips:6.1f} it/s  (ours {ours_ips / caffe_ips:.2f}x Caffe)"
        )
        if exact_s:
            exact_ips = iterations / statistics.median(exact_s)
            print(f"{'':24s} ours bit-exact (--caffe-blas) {exact_ips:7.1f} it/s ({exact_ips / caffe_ips:.2f}x Caffe)")
    verdict = "PASS" if worst_ratio <= 1.1 else "FAIL"
    print(f"worst slow-down vs hand-written {worst_ratio:.3f} (target <= 1.1): {verdict}")
    print(f"worst speed vs Caffe {worst_vs_caffe:.2f}x (aim >= 2)")
    return 0 if worst_ratio <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
