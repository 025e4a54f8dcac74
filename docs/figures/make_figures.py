#!/usr/bin/env python3
"""The original study's two kinds of figure, drawn from the logs of our runs (see README.md beside this file).

    python docs/figures/make_figures.py [--runs runs/figures] [--out docs/figures]

mnist-lambda.png: the distilled student's test accuracy against iterations for each soft-loss weight alpha (the
study's lambda), and its final test accuracy against alpha beside the teacher's and the student alone's.
mnist_loss_comparison.png: test cross-entropy and test accuracy against iterations of the teacher, the student
alone and the distilled student (the study's cifar10_loss_comparison, on the MNIST data we have).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.viz.parse_log import parse_log  # noqa: E402

LAST = 5  # final accuracy: the mean of the last LAST tests (one test of 1000 images moves by 1/1000 steps)


def newest_log(folder: Path) -> Path:
    logs = sorted(folder.glob("*_train_*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        sys.exit(f"make_figures.py: no training log in {folder}: run the commands in docs/figures/README.md first")
    return logs[-1]


def test_curve(folder: Path, column: str) -> tuple[list[int], list[float]]:
    log = parse_log(newest_log(folder))
    last = max((r.get("Segment", 0) for r in log.test.rows), default=0)  # a resumed run: its last segment
    rows = [r for r in log.test.rows if column in r and r.get("Segment", 0) == last]
    return [int(r["NumIters"]) for r in rows], [float(r[column]) for r in rows]


def final(folder: Path, column: str) -> float:
    _, values = test_curve(folder, column)
    tail = values[-LAST:]
    return sum(tail) / len(tail)


def lambda_figure(runs: Path, output: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    sweep = sorted(
        ((float(m.group(1)), d) for d in (runs / "lambda").iterdir() if (m := re.fullmatch(r"alpha-([\d.]+)", d.name))),
    )
    figure = Figure(figsize=(12, 4.6), layout="constrained")
    curves, finals = figure.subplots(1, 2, width_ratios=[1.6, 1])
    for alpha, folder in sweep:
        iters, accuracy = test_curve(folder, "accuracy")
        colour = colormaps["viridis"](alpha * 0.92)
        curves.plot(iters, accuracy, color=colour, linewidth=1.3, marker="o", markersize=2.5, label=f"α = {alpha:g}")
    curves.set_ylim(0.84, 0.96)
    curves.set_xlabel("iterations")
    curves.set_ylabel("test accuracy (student)")
    curves.set_title("distilled student, one line per soft-loss weight α")
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize="small", ncol=2, loc="lower right")
    alphas = [a for a, _ in sweep]
    finals.plot(alphas, [final(f, "accuracy") for _, f in sweep], "o-", color="#2f6fb0", label="distilled student")
    finals.axhline(final(runs / "teacher", "accuracy"), color="#b45f06", linestyle="--", label="teacher (LeNet)")
    finals.axhline(final(runs / "student", "accuracy"), color="0.4", linestyle=":", label="student alone")
    finals.set_xlabel("α (weight of the soft-target loss; 1 - α on the labels)")
    finals.set_ylabel(f"final test accuracy (mean of last {LAST} tests)")
    finals.set_title("final accuracy against α")
    finals.grid(True, alpha=0.3)
    finals.legend(fontsize="small", loc="lower right")
    figure.suptitle("MNIST (embedded 4,000 / 1,000 digits): MLP-100 student distilled from LeNet, T = 4")
    figure.savefig(output, dpi=110)


def comparison_figure(runs: Path, distilled: str, output: Path) -> None:
    from matplotlib.figure import Figure

    lines = [
        ("teacher (LeNet)", runs / "teacher", "loss", "#b45f06", "-"),
        ("student alone (MLP-100)", runs / "student", "loss", "0.35", ":"),
        (f"distilled student (MLP-100, {distilled.replace('-', ' = ')}, T = 4)", runs / "lambda" / distilled,
         "hard_loss", "#2f6fb0", "-"),
    ]  # fmt: skip
    figure = Figure(figsize=(12, 4.6), layout="constrained")
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    for label, folder, loss_column, colour, style in lines:
        iters, loss = test_curve(folder, loss_column)
        loss_ax.plot(iters, loss, color=colour, linestyle=style, linewidth=1.6, label=label)
        iters, accuracy = test_curve(folder, "accuracy")
        accuracy_ax.plot(iters, accuracy, color=colour, linestyle=style, linewidth=1.6, label=label)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("test cross-entropy on the labels (log scale)")
    loss_ax.set_title("test loss")
    accuracy_ax.set_ylim(0.84, 0.98)
    accuracy_ax.set_ylabel("test accuracy")
    accuracy_ax.set_title("test accuracy")
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel("iterations")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
    figure.suptitle("Teacher vs student alone vs distilled student (MNIST, embedded 4,000 / 1,000 digits)")
    figure.savefig(output, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/figures", help="the runs' folder (default runs/figures)")
    parser.add_argument("--out", default="docs/figures", help="where the PNGs go (default docs/figures)")
    parser.add_argument("--distilled", default="alpha-0.9", help="the lambda run shown as 'distilled'")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lambda_figure(runs, out / "mnist-lambda.png")
    comparison_figure(runs, args.distilled, out / "mnist_loss_comparison.png")
    for name in ("mnist-lambda.png", "mnist_loss_comparison.png"):
        print(f"Wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
