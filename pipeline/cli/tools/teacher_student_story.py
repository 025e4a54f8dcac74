"""`make train` (no SOLVER given): the whole teacher-student story on MNIST, in a few minutes on a CPU.

1. build the MNIST LMDBs (pipeline.data.prepare: the embedded 5,000 digits by default, or --data-dir DIR),
2. train the teacher: LeNet with Caffe's lenet_solver recipe, fewer iterations (or load --teacher-weights),
3. train a small student alone: an MLP (784-32-10 by default) on the hard labels,
4. distil the same student from the teacher: prototxt/teacher_student.prototxt, teacher weights loaded under the
   prefix t_ (--weights-map '*=t_*'), soft targets cached (cache_teacher),
5. print the three test accuracies side by side and how often student and teacher agree on the test images.

Glog-style logs, rendered prototxts and snapshots go to runs/story/ (--run). Every step is an ordinary solver
run: `python -m pipeline train --solver solvers/... --set ...` reproduces any of them (printed at the end).
Progress (iterations/s, time left) goes to stderr: a bar on a terminal, else a line every 15 s. `make train`
passes HIDDEN, TEMPERATURE, ALPHA, ITERS, TEACHER_ITERS, STUDENT_ITERS, TEACHER_WEIGHTS, OUT and MNIST_DIR on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.glog import setup_logging


# ----- helpers shared with bench/hinton_mnist.py and bench/distill_training.py ---------------------------------
@dataclass
class Run:
    """One finished solver run: where its log and final snapshot are, and its test-set predictions."""

    name: str
    log: str
    snapshot: str | None
    seconds: float
    iters: int
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # blob -> argmax per test image
    labels: np.ndarray | None = None

    def accuracy(self, blob: str) -> float:
        return float((self.predictions[blob] == self.labels).mean())

    def errors(self, blob: str) -> int:
        return int((self.predictions[blob] != self.labels).sum())

    def agreement(self, a: str, b: str) -> float:
        return float((self.predictions[a] == self.predictions[b]).mean())


def train(
    solver_template: str | Path,
    variables: dict,
    log_file: str | Path,
    blobs=("logits",),
    weights: str | None = None,
    weights_map: str | None = None,
    quiet: bool = True,
    progress: bool | str | None = False,
) -> Run:
    """Build a solver from a template, optionally load (renamed) weights, solve, and score `blobs` on the test set.

    The glog lines go to `log_file` (and the terminal unless `quiet`); the solver writes its final snapshot."""
    from google.protobuf import text_format

    from pipeline.solvers import build_solver
    from pipeline.viz.report import PhaseTimer, report_for_solver
    from pipeline.weights.name_map import load_weights, parse_weights_map

    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    Path(variables["run"]).mkdir(parents=True, exist_ok=True)
    with open(os.devnull, "w") as devnull:
        setup_logging(log_file, stream=devnull if quiet else None)
        try:
            start = time.perf_counter()
            solver = build_solver(str(solver_template), dict(variables), progress=progress)
            if weights:
                load_weights(solver, weights, parse_weights_map(weights_map))
            timer = PhaseTimer.attach(solver)
            solver.solve()
            seconds = time.perf_counter() - start
            predictions, labels = predict(solver, blobs)
            # Every training run ends with its report beside its snapshots, as `train` writes one.
            report_for_solver(solver, log_file, text_format.MessageToString(solver.param), timer)
        finally:
            setup_logging()
    return Run(
        name=str(variables.get("name", Path(solver_template).stem)),
        log=str(log_file),
        snapshot=_final_model(solver),
        seconds=seconds,
        iters=solver.iter,
        predictions=predictions,
        labels=labels,
    )


def _final_model(solver) -> str | None:
    model = solver.snapshot_filename(".caffemodel")
    return model if Path(model).is_file() else None


def predict(solver, blobs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Argmax of each blob in `blobs` and the labels, over test_iter batches of the first test net (the whole test
    set when test_iter x batch equals its size)."""
    from pipeline.solvers.sharing import share_weights

    net = solver.test_nets[0]
    share_weights(solver.net, net)
    net.eval()
    found: dict[str, list[np.ndarray]] = {b: [] for b in blobs}
    labels = []
    with torch.no_grad():
        for _ in range(solver.param.test_iter[0]):
            net.forward()
            for blob in blobs:
                found[blob].append(net.blobs[blob].data.argmax(1).cpu().numpy())
            labels.append(net.blobs["label"].data.cpu().numpy().astype(np.int64))
    return {b: np.concatenate(v) for b, v in found.items()}, np.concatenate(labels)


def count_records(db: str | Path) -> int:
    from pipeline.data.lmdb_source import LmdbReader

    return LmdbReader(str(db)).entries


def command_line(solver: str, variables: dict, weights: str | None = None, weights_map: str | None = None) -> str:
    """The `python -m pipeline train` line that repeats one step (variables as --set name=value)."""
    parts = [".venv/bin/python -m pipeline train", f"--solver {solver}"]
    for key, value in variables.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        parts.append(f"--set '{key}={text}'")
    if weights:
        parts.append(f"--weights {weights}")
    if weights_map:
        parts.append(f"--weights-map '{weights_map}'")
    return " ".join(parts)


# ----- the story ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    return story(parse_args(argv))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/story", help="folder for logs and snapshots (default runs/story)")
    parser.add_argument("--data", default="data", help="LMDB folder (default data: data/mnist/...)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("PIPELINE_MNIST_DIR") or None,
        help="MNIST IDX folder to build from (e.g. ../shared/data/mnist; default $PIPELINE_MNIST_DIR); default: what "
        "DATA already holds, else the embedded 5,000 digits (4,000 train, 1,000 test)",
    )
    parser.add_argument("--iters", type=int, help="iterations of every run (default 1000; see the next two)")
    parser.add_argument("--teacher-iters", type=int, help="LeNet iterations (batch 64; default --iters)")
    parser.add_argument("--student-iters", type=int, help="student iterations, alone and distilled (default --iters)")
    parser.add_argument(
        "--teacher-weights",
        metavar="CAFFEMODEL",
        help="a trained LeNet (layers conv1, conv2, ip1, ip2; e.g. runs/story/teacher/lenet_iter_1000.caffemodel) "
        "to use instead of training the teacher",
    )
    parser.add_argument("--student-hidden", default="32", help="student MLP hidden widths, comma-separated")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the soft loss (hard labels get 1 - alpha)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--download", action="store_true", help="download MNIST when data/ has none and no --data-dir")
    parser.add_argument("--quiet", action="store_true", help="print nothing (the summary is in RUN/summary.json)")
    parser.add_argument("--verbose", action="store_true", help="show the solvers' glog lines on the terminal")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or lines")
    args = parser.parse_args(argv)
    default = 1000 if args.iters is None else args.iters
    args.teacher_iters = default if args.teacher_iters is None else args.teacher_iters
    args.student_iters = default if args.student_iters is None else args.student_iters
    if args.student_iters <= 0 or (args.teacher_iters <= 0 and not args.teacher_weights):
        parser.error("iteration counts must be positive")
    if args.teacher_weights and not Path(args.teacher_weights).is_file():
        parser.error(f"--teacher-weights: '{args.teacher_weights}' is not a file")
    return args


def build_ops(progress) -> None:
    """Compile the C++ ops now (first run only, then cached), with the elapsed time shown, not mid-training."""
    from pipeline.ops import distill, fast_ops
    from pipeline.solvers.progress import busy

    with busy("compiling the C++ ops (first run only)", progress):
        fast_ops.available()
        distill.load_library()


def story(args) -> int:
    from pipeline.data.prepare import prepare_mnist
    from pipeline.solvers.progress import busy

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir, data = Path(args.run), Path(args.data)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging()
    started = time.perf_counter()
    progress = "lines" if args.progress and not args.quiet else False
    with busy("building the MNIST databases", progress):
        source = prepare_mnist(data, args.data_dir, download=args.download, force=False)
    counts = {split: count_records(data / "mnist" / f"mnist_{split}_lmdb") for split in ("train", "test")}
    test_batch = 100
    if counts["test"] % test_batch:
        test_batch = next(b for b in range(100, 0, -1) if counts["test"] % b == 0)
    test_iter = counts["test"] // test_batch
    where = source.get("path") or source.get("what") or source.get("kind")
    say = print if not args.quiet else (lambda *a, **k: None)
    say(f"MNIST: {counts['train']} training and {counts['test']} test images in {data / 'mnist'} (from {where})")
    build_ops(progress)
    hidden = [int(h) for h in args.student_hidden.split(",") if h]
    student_name = "MLP 784-" + "-".join(map(str, hidden)) + "-10"
    common = {
        "data_root": str(data),
        "test_iter": test_iter,
        "test_batch": test_batch,
        "display": 100,
        "snapshot": 0,
        "random_seed": args.seed,
    }
    steps = {
        "teacher": (
            "solvers/lenet_solver.prototxt",
            {**common, "max_iter": args.teacher_iters, "test_interval": args.teacher_iters},
        ),
        "student": (
            "solvers/mlp_solver.prototxt",
            {**common, "hidden": hidden, "max_iter": args.student_iters, "test_interval": args.student_iters},
        ),
    }
    steps["distilled"] = (
        "solvers/teacher_student_solver.prototxt",
        {
            **common,
            "max_iter": args.student_iters,
            "test_interval": args.student_iters,
            "student": "mlp.prototxt",
            "student_vars": {"hidden": hidden, "test_batch": test_batch},
            "teacher": "lenet.prototxt",
            "teacher_logits": "ip2",
            "temperature": args.temperature,
            "alpha": args.alpha,
            "cache_teacher": True,
        },
    )
    runs: dict[str, Run] = {}
    commands = {}
    for name, (solver, variables) in steps.items():
        variables = {**variables, "run": str(run_dir / name)}
        if name == "teacher":
            variables["test_batch"] = test_batch
        weights = weights_map = None
        blobs = ("ip2",) if name == "teacher" else ("logits",)
        if name == "teacher" and args.teacher_weights:
            # Loaded, not trained: zero iterations score the given weights (and snapshot them under the run).
            weights, variables["max_iter"] = args.teacher_weights, 0
        if name == "distilled":
            teacher_weights = args.teacher_weights or runs["teacher"].snapshot
            weights, weights_map, blobs = teacher_weights, "*=t_*", ("logits", "t_ip2")
        label = {
            "teacher": f"teacher: LeNet from {args.teacher_weights}" if args.teacher_weights else "teacher: LeNet",
            "student": f"student alone: {student_name}",
            "distilled": f"student distilled from the teacher at T = {args.temperature:g}",
        }[name]
        iters = variables["max_iter"]
        doing = f"training the {label} ({iters} iterations)" if iters else f"scoring the {label}"
        say(f"[{time.perf_counter() - started:5.0f} s] {doing} ...", flush=True)
        runs[name] = train(
            solver,
            variables,
            run_dir / f"{name}.log",
            blobs,
            weights,
            weights_map,
            quiet=not args.verbose,
            progress=progress,
        )
        if variables["max_iter"]:
            commands[name] = command_line(solver, variables, weights, weights_map)
    teacher, alone, distilled = runs["teacher"], runs["student"], runs["distilled"]
    summary = {
        "teacher": teacher.accuracy("ip2"),
        "student": alone.accuracy("logits"),
        "distilled": distilled.accuracy("logits"),
        "agreement_distilled": distilled.agreement("logits", "t_ip2"),
        "agreement_student": (
            float((alone.predictions["logits"] == teacher.predictions["ip2"]).mean())
            if np.array_equal(alone.labels, teacher.labels)
            else None
        ),
        "test_images": int(len(teacher.labels)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    n = summary["test_images"]
    say("")
    say(f"Test accuracy on {n} MNIST test images:")
    say(f"  {'teacher  LeNet':44s} {summary['teacher']:.4f}  ({n - round(summary['teacher'] * n)} errors)")
    say(
        f"  {'student  ' + student_name + ' alone':44s} {summary['student']:.4f}  "
        f"({n - round(summary['student'] * n)} errors)"
    )
    say(
        f"  {'student  ' + student_name + ' distilled':44s} {summary['distilled']:.4f}  "
        f"({n - round(summary['distilled'] * n)} errors; T = {args.temperature:g}, alpha = {args.alpha:g})"
    )
    alone_agree = summary["agreement_student"]
    say(
        f"Teacher-student agreement (same argmax): distilled {summary['agreement_distilled']:.4f}"
        + (f", alone {alone_agree:.4f}" if alone_agree is not None else "")
    )
    say(f"Logs (glog): {', '.join(r.log for r in runs.values())}")
    say(f"Snapshots: {', '.join(str(r.snapshot) for r in runs.values())}")
    say(f"Summary: {run_dir / 'summary.json'}; took {summary['seconds']:.0f} s. Any step again:")
    for name, line in commands.items():
        say(f"  {name}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
