"""Transferability of features (Yosinski et al. 2014) on MNIST: digits 0-4 (task A) against 5-9 (task B).

    .venv/bin/python bench/transferability.py [--seeds 2] [--iters 600] [--workers 2]

Trains baseA and baseB, then for n = 1..4 the BnB, BnB+, AnB and AnB+ nets (pipeline/transfer/transferability.py),
all with Caffe's SGD (lr 0.01 "inv", momentum 0.9, weight decay 5e-4, batch 64). Also the off-the-shelf baseline:
baseA's ip2 features (pipeline/transfer/features.py) of task B's images fed to scikit-learn classifiers, against
training the same head (ip3) by SGD on frozen features (AnB at n = 4).

Writes docs/figures/transferability_mnist.{csv,md,png} and transferability_features_mnist.{md,json}; with
--cifar DIR the same on CIFAR-10 (classes 0-4 against 5-9), files named _cifar10.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.transfer import transferability as tr  # noqa: E402

FIGURES = ROOT / "docs" / "figures"
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _init_worker() -> None:
    tr.set_threads(1)
    import logging

    logging.getLogger("pipeline").setLevel(logging.WARNING)


def _base(task: str, split, settings, seed):
    _init_worker()
    return task, seed, tr.train(split, settings, seed)


def _transfer(kind, n, base_a, base_b, split_b, settings, seed):
    _init_worker()
    return kind, n, seed, tr.transfer_job(kind, n, base_a, base_b, split_b, settings, seed)


def features_baseline(base_a: dict, split_b, settings, seed: int) -> list[dict]:
    """baseA's ip2 features of task B, classified by scikit-learn (fit on B's training images, scored on its test)."""
    from pipeline.net import Net
    from pipeline.net.layers.memory_data import set_input_arrays
    from pipeline.text.prototxt import net_from_string
    from pipeline.transfer import features as ft
    from pipeline.weights.io import copy_layer_blobs

    channels, side = split_b.train_x.shape[1], split_b.train_x.shape[-1]
    param = net_from_string(tr.net_text(5, settings.test_batch, settings.test_batch, side, channels=channels))
    extracted = {}
    for phase, x, y in (("TRAIN", split_b.train_x, split_b.train_y), ("TEST", split_b.test_x, split_b.test_y)):
        net = Net(ft.feature_net_param(param, phase), phase="TEST")
        copy_layer_blobs(net, base_a, "baseA")
        set_input_arrays(net, *tr.whole_batches(x, y, settings.test_batch))
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
    data, source = tr.load_cifar(args.cifar) if args.cifar else tr.load_digits(args.mnist)
    name = "cifar10" if args.cifar else "mnist"
    what = "CIFAR-10, A = classes 0-4, B = 5-9" if args.cifar else "MNIST, A = 0-4, B = 5-9"
    splits = {"A": tr.task(data, range(0, 5), args.train_limit), "B": tr.task(data, range(5, 10), args.train_limit)}
    settings = tr.Settings(iters=args.iters)
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
            task, seed, (accuracy, weights) = future.result()
            bases[(task, seed)] = weights
            rows.append({"experiment": f"base{task}", "n": 0, "seed": seed, "accuracy": accuracy})
            print(f"  base{task} seed {seed}: {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        futures = [
            pool.submit(_transfer, kind, n, bases[("A", s)], bases[("B", s)], splits["B"], settings, s)
            for s in seeds
            for kind, n in tr.jobs_for()
        ]
        for seed in seeds:
            feature_rows += features_baseline(bases[("A", seed)], splits["B"], settings, seed)
        for future in futures:
            kind, n, seed, accuracy = future.result()
            rows.append({"experiment": kind, "n": n, "seed": seed, "accuracy": accuracy})
            print(f"  {kind} n={n} seed {seed}: {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    elapsed = time.perf_counter() - start
    rows = [r for r in rows if r["experiment"] != "baseA"] + [r for r in rows if r["experiment"] == "baseA"]
    tr.write_csv(rows, out / f"transferability_{name}.csv")
    base_a = [r["accuracy"] for r in rows if r["experiment"] == "baseA"]
    table = tr.markdown_table([r for r in rows if r["experiment"] != "baseA"])
    notes = (
        f"Task A = classes 0-4, task B = classes 5-9 ({source}); {args.iters} SGD iterations per net, "
        f"{len(seeds)} seed(s) (mean ± half the range); baseA on task A: {np.mean(base_a):.4f}. "
        f"Wall time {elapsed / 60:.1f} min with {args.workers} worker process(es).\n"
    )
    (out / f"transferability_{name}.md").write_text(notes + "\n" + table)
    tr.plot(
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
