"""The original VGG case, small: a deep VGG-style student (no BatchNorm, gaussian 0.01 weights) distilled from LeNet,
trained end to end and layer at a time.

    .venv/bin/python bench/layerwise_vs_endtoend.py [--block-iter 250] [--fc-iter 250] [--all-iter 500]

1. LeNet (prototxt/lenet.prototxt, solvers/lenet_solver.prototxt) is trained on MNIST as the teacher.
2. The student (bench/layerwise_vs_endtoend/vgg_student.prototxt) is composed with the frozen teacher by
   prototxt/teacher_student.prototxt (KnowledgeDistillation, T = 4, alpha 0.9) and trained twice with the same
   solver (bench/layerwise_vs_endtoend/solver.prototxt): end_to_end.schedule (one stage, every layer) and
   layerwise.schedule (each VGG block alone with a temporary distillation head, then the classifier, then all),
   both through pipeline/transfer/layerwise.py, as tools/train_layerwise.py runs them.
Test accuracy (1,000 test digits by default) and the student's training distillation loss are recorded along the way.

Writes docs/figures/layerwise_vs_endtoend.{png,csv,md}; runs (snapshots, logs) go to runs/layerwise_vs_endtoend/.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HERE = ROOT / "bench" / "layerwise_vs_endtoend"
FIGURES = ROOT / "docs" / "figures"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
RUNS = Path("runs/layerwise_vs_endtoend")


def write_data(train_limit: int, test_limit: int) -> dict[str, str]:
    """MNIST (or the embedded digits) as HDF5 files scaled by 1/256, the form the templates' data="hdf5" reads."""
    import h5py

    from bench.transferability import load_digits

    data, source = load_digits(MNIST)
    folder = RUNS / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    lists = {}
    for split, limit in (("train", train_limit), ("test", test_limit)):
        images, labels = data[split]
        keep = rng.permutation(len(images))[:limit]
        path = folder / f"{split}.h5"
        with h5py.File(path, "w") as f:
            f["data"] = images[keep, None].astype(np.float32) * np.float32(0.00390625)
            f["label"] = labels[keep].astype(np.float32)
        lists[split] = str(folder / f"{split}.txt")
        Path(lists[split]).write_text(f"{path}\n")
    print(f"data: {source}; {train_limit} train / {test_limit} test digits", flush=True)
    return lists


def train_teacher(lists: dict[str, str], iters: int) -> tuple[str, float]:
    from pipeline.solvers import build_solver

    variables = {
        "net": "prototxt/lenet.prototxt",
        "data": "hdf5",
        "train_source": lists["train"],
        "test_source": lists["test"],
        "max_iter": iters,
        "test_iter": 10,
        "test_interval": iters,
        "display": 0,
        "snapshot": 0,
        "run": str(RUNS / "teacher"),
        "random_seed": 1701,
    }
    (RUNS / "teacher").mkdir(parents=True, exist_ok=True)
    solver = build_solver(ROOT / "solvers" / "lenet_solver.prototxt", variables, progress=False)
    solver.solve()
    return solver.snapshot_filename(".caffemodel"), float(solver.test_scores[0]["accuracy"])


class Recorder:
    """Collects (global iteration, stage, test scores) and per-iteration training losses of a layer-wise run."""

    def __init__(self, plans):
        self.offsets, total = {}, 0
        for plan in plans:
            self.offsets[plan.name] = total
            total += plan.max_iter
        self.tests: list[tuple[int, str, dict]] = []
        self.losses: list[tuple[int, str, float]] = []

    def on_solver(self, solver, plan):
        offset = self.offsets[plan.name]
        original = solver.test

        def test(test_net_id=0):
            scores = original(test_net_id)
            if scores is not None:
                self.tests.append((offset + solver.iter, plan.name, dict(scores)))
            return scores

        def loss(s):
            self.losses.append((offset + s.iter, plan.name, float(s.net.blobs["loss"].data.detach())))

        solver.test = test
        solver.on_iteration.append(loss)


def test_interval(lengths: list[int], most: int = 100) -> int:
    """The largest interval up to `most` that divides every stage length (so each stage ends with a test)."""
    common = math.gcd(*lengths)
    return max(d for d in range(1, min(common, most) + 1) if common % d == 0)


def run_student(
    kind: str, lists: dict, teacher: str, schedule_vars: dict, interval: int, test_iter: int, filler: str
) -> dict:
    import logging

    import torch

    from pipeline.glog import setup_logging
    from pipeline.solvers import read_solver_param
    from pipeline.transfer.layerwise import LayerwiseRun
    from pipeline.transfer.schedule import read_schedule
    from pipeline.transfer.surgery import read_weights

    torch.set_num_threads(1)
    folder = RUNS / f"{kind}_{filler}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    setup_logging(folder / "train.log", stream=open(os.devnull, "w"), level=logging.INFO)
    student = {"data": "hdf5", "train_source": lists["train"], "test_source": lists["test"], "weight_filler": filler}
    variables = {
        "net": "prototxt/teacher_student.prototxt",
        "prefix": str(folder / "vgg"),
        "student": str(HERE / "vgg_student.prototxt"),
        "student_logits": "logits",
        "teacher": "lenet.prototxt",
        "teacher_logits": "ip2",
        "data": "hdf5",
        "student_vars": student,
        "teacher_vars": student,
        "test_interval": interval,
        "test_iter": test_iter,
    }
    param, _ = read_solver_param(HERE / "solver.prototxt", variables)
    schedule = read_schedule(HERE / f"{kind}.schedule", schedule_vars)
    rename = {name: f"t_{name}" for name in read_weights(teacher)}
    job = LayerwiseRun(param, schedule, str(HERE / "solver.prototxt"), variables, [(teacher, rename)], progress=False)
    recorder = Recorder(job.plans)
    job.on_solver = recorder.on_solver
    start = time.perf_counter()
    result = job.run()
    return {
        "kind": kind,
        "tests": recorder.tests,
        "losses": recorder.losses,
        "stages": [(p.name, recorder.offsets[p.name], p.max_iter) for p in job.plans],
        "seconds": time.perf_counter() - start,
        "final": result.final_weights,
    }


def smooth(points: list[tuple[int, float]], window: int) -> tuple[np.ndarray, np.ndarray]:
    iters = np.array([p[0] for p in points])
    values = np.array([p[1] for p in points])
    n = len(values) // window
    return iters[: n * window].reshape(n, window)[:, -1], values[: n * window].reshape(n, window).mean(axis=1)


def plot(runs: dict, teacher_accuracy: float, path: Path, weights: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120)
    colors = {"end_to_end": "#c81e1e", "layerwise": "#1f3fbf"}
    labels = {"end_to_end": "end to end", "layerwise": "layer at a time"}
    for kind, run in runs.items():
        tests = run["tests"]
        left.plot(
            [t[0] for t in tests],
            [t[2]["accuracy"] for t in tests],
            "-o",
            ms=3,
            color=colors[kind],
            label=f"{labels[kind]}: student output",
        )
        if kind == "layerwise":
            for i, (name, _, _) in enumerate(run["stages"]):
                aux = [
                    (t[0], v)
                    for t in tests
                    if t[1] == name
                    for k, v in t[2].items()
                    if k.startswith("aux_") and k.endswith("accuracy")
                ]
                if aux:
                    label = "layer at a time: temporary head of the stage" if i == 0 else None
                    left.plot(*zip(*aux), "--", marker=".", color="#7fa7ff", label=label)
            for name, offset, _ in run["stages"]:
                for axis in (left, right):
                    axis.axvline(offset, color="gray", ls=":", lw=0.8)
                left.text(offset + 8, 0.22, name, fontsize=7, color="gray", rotation=90, va="bottom")
        x, y = smooth([(i, v) for i, _, v in run["losses"]], 20)
        right.plot(x, y, color=colors[kind], label=labels[kind])
    left.axhline(teacher_accuracy, color="black", ls="--", lw=0.8, label=f"teacher LeNet ({teacher_accuracy:.3f})")
    left.axhline(0.1, color="gray", lw=0.6)
    left.set(
        xlabel="iteration",
        ylabel="test accuracy",
        ylim=(0, 1.02),
        title=f"VGG-style student (10 layers, no BatchNorm, {weights} weights) from LeNet",
    )
    right.set(
        xlabel="iteration",
        ylabel="student's distillation loss (train, mean of 20 iterations)",
        yscale="log",
        title="distillation loss of the student's output (T = 4, alpha 0.9)",
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_csv(runs: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "stage", "iteration", "accuracy", "temporary_head_accuracy", "teacher_accuracy"])
        for kind, run in runs.items():
            for iteration, stage, scores in run["tests"]:
                aux = next((v for k, v in scores.items() if k.startswith("aux_") and k.endswith("accuracy")), "")
                writer.writerow(
                    [
                        kind,
                        stage,
                        iteration,
                        f"{scores['accuracy']:.4f}",
                        f"{aux:.4f}" if aux != "" else "",
                        f"{scores.get('teacher_accuracy', 0):.4f}",
                    ]
                )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-iter", type=int, default=250)
    parser.add_argument("--fc-iter", type=int, default=250)
    parser.add_argument("--all-iter", type=int, default=500)
    parser.add_argument("--teacher-iter", type=int, default=1000)
    parser.add_argument("--train-limit", type=int, default=20000, help="training digits")
    parser.add_argument("--test-limit", type=int, default=1000, help="test digits (a multiple of 100)")
    parser.add_argument(
        "--weight-filler", default="gaussian", help="the student's weights: gaussian (std 0.01) or xavier"
    )
    parser.add_argument("--tag", default="", help="suffix of the output files (e.g. _xavier)")
    parser.add_argument("--out", default=str(FIGURES))
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lists = write_data(args.train_limit, args.test_limit)
    teacher, teacher_accuracy = train_teacher(lists, args.teacher_iter)
    print(
        f"teacher LeNet: {teacher_accuracy:.4f} after {args.teacher_iter} iterations "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    total = 3 * args.block_iter + args.fc_iter + args.all_iter
    schedules = {
        "layerwise": {"block_iter": args.block_iter, "fc_iter": args.fc_iter, "all_iter": args.all_iter},
        "end_to_end": {"total_iter": total},
    }
    with ProcessPoolExecutor(2) as pool:
        interval = test_interval([args.block_iter, args.fc_iter, args.all_iter, total])
        futures = {
            k: pool.submit(run_student, k, lists, teacher, v, interval, args.test_limit // 100, args.weight_filler)
            for k, v in schedules.items()
        }
        runs = {k: f.result() for k, f in futures.items()}
    weights = "gaussian(0.01)" if args.weight_filler == "gaussian" else args.weight_filler
    plot(runs, teacher_accuracy, out / f"layerwise_vs_endtoend{args.tag}.png", weights)
    write_csv(runs, out / f"layerwise_vs_endtoend{args.tag}.csv")
    lines = [
        f"Teacher LeNet: {teacher_accuracy:.4f} test accuracy. Student: VGG-style, 10 learned layers, no BatchNorm, "
        f"{weights} weights; {total} iterations in all for each run.",
        "",
        "| run | final test accuracy | best test accuracy | wall time |",
        "|---|---|---|---|",
    ]
    for kind, run in runs.items():
        accuracies = [t[2]["accuracy"] for t in run["tests"]]
        lines.append(f"| {kind} | {accuracies[-1]:.4f} | {max(accuracies):.4f} | {run['seconds'] / 60:.1f} min |")
    stage_rows = [
        "",
        "| layer-wise stage | iterations | test accuracy of the temporary head at its end |",
        "|---|---|---|",
    ]
    for name, offset, iters in runs["layerwise"]["stages"]:
        end = [t for t in runs["layerwise"]["tests"] if t[1] == name and t[0] == offset + iters]
        aux = [v for t in end for k, v in t[2].items() if k.startswith("aux_") and k.endswith("accuracy")]
        shown = f"{aux[0]:.4f}" if aux else f"(student output {end[0][2]['accuracy']:.4f})" if end else ""
        stage_rows.append(f"| {name} | {iters} | {shown} |")
    text = "\n".join(lines + stage_rows) + "\n"
    (out / f"layerwise_vs_endtoend{args.tag}.md").write_text(text)
    print(text + f"total {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
