"""Hinton, Vinyals & Dean (2015), section 3, MNIST: a big regularised teacher, a small unregularised student
trained alone and distilled from the teacher at T = 20. The paper: 67 (teacher), 146 (student alone), 74
(distilled) test errors out of 10,000. Target here: the distilled student makes >= 30% fewer errors than alone.

    .venv/bin/python bench/hinton_mnist.py --jobs 2             # full MNIST from ../shared/data/mnist, ~35 min
    nohup .venv/bin/python bench/hinton_mnist.py --jobs 2 > runs/hinton/bench.log 2>&1 &      # in the background

Nets (prototxt/hinton_mnist.prototxt, i.e. mlp.prototxt's variables; solvers/mlp_solver.prototxt):
  teacher    784-1200-1200-10 ReLU, dropout 0.3 on the hidden layers (the paper's 0.5 with 0.2 on the input
             fits too slowly for a CPU budget: 118 errors after 150 epochs, against 77-79 after 40 with 0.3 and
             none on the input), inputs jittered by up to 2 pixels (digits zero-padded to 32 x 32 in their own
             LMDB, random 28 x 28 crop in TRAIN, centre crop in TEST); SGD, momentum 0.9, lr 0.1, poly decay
  student    784-800-800-10 ReLU, no regularisation, hard labels (one run per seed); Adam, lr 0.001, poly decay.
             Adam for both students: at T = 20 the T^2-scaled soft loss pulls the logits like 0.1 * (s - t), so
             SGD at a learning rate that trains on hard labels leaves the distilled student far from its targets
             (train agreement 0.978 after 10 epochs, 286 test errors), and a 10x larger rate kills its ReLUs
  distilled  the same student in prototxt/hinton_distill.prototxt: it reads the unshifted digits only (no
             translations in the transfer set, as in the paper); the soft target at T = 20 is the teacher's mean
             logit over the 25 translations of up to 2 pixels it was trained on (25 frozen copies sharing the
             teacher's weights, loaded under the prefix t_; dropout off: Caffe's dropout is inverted), cached once
             per digit. The 81-error teacher's shift average makes 67 errors, the paper's teacher figure; its
             prediction on the digit alone (--teacher-shifts 0, prototxt/teacher_student.prototxt) left the
             distilled student at 100.7 (27.8%, short of the 30% target; docs/benchmarks.md has both).
Each finished run leaves results/<name>.json under --run; a rerun skips those (same settings), so an interrupted
benchmark resumes. --jobs 2 trains the students alone in a second process while the teacher trains.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.cli.tools.teacher_student_story import train

ROOT = Path(__file__).resolve().parents[1]

TRAIN_SIZE, TEST_SIZE, BATCH = 60000, 10000, 100
JITTER = 2  # pixels: the teacher's random translations (and the padding of its LMDB)
PAPER = {"teacher": 67, "student": 146, "distilled": 74}


def prepare_data(out: Path, mnist_dir: str, jitter: int) -> None:
    """Full MNIST LMDBs under out/mnist, and the zero-padded copy under out/mnist_pad<jitter> for the teacher."""
    from pipeline.data import datasets
    from pipeline.data.convert import write_images
    from pipeline.data.prepare import prepare_mnist

    prepare_mnist(out, mnist_dir, download=False)
    folder = out / f"mnist_pad{jitter}"
    stamp = folder / "source.json"
    wanted = {"from": str(Path(mnist_dir).resolve()), "pad": jitter}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        images, labels = datasets.load_mnist(mnist_dir, split)
        padded = np.pad(images, ((0, 0), (jitter, jitter), (jitter, jitter)))
        write_images(folder / f"mnist_pad{jitter}_{split}_lmdb", padded, labels, "%08d", overwrite=True)
    stamp.write_text(json.dumps(wanted))


def settings(args) -> dict:
    data_root = str(Path(args.run) / "data")
    common = {"data_root": data_root, "test_iter": TEST_SIZE // BATCH, "display": 100, "momentum": 0.9}
    epoch = TRAIN_SIZE // BATCH
    teacher = {
        **common,
        "net": "prototxt/hinton_mnist.prototxt",
        "hidden": [1200, 1200],
        "dropout": args.teacher_dropout,
        "input_dropout": args.teacher_input_dropout,
        "jitter": JITTER,
        "base_lr": args.teacher_lr,
        "lr_policy": "poly",
        "max_iter": max(1, round(args.teacher_epochs * epoch)),
        "test_interval": max(1, round(args.teacher_epochs * epoch / 4)),
        "random_seed": 1000,
    }
    student = {
        **common,
        "net": "prototxt/hinton_mnist.prototxt",
        "hidden": [800, 800],
        "type": args.solver_type,
        "base_lr": args.lr,
        "lr_policy": "poly",
        "max_iter": max(1, round(args.epochs * epoch)),
        "test_interval": max(1, round(args.epochs * epoch / 2)),
    }
    distilled = {
        **{k: v for k, v in student.items() if k not in ("net", "hidden")},
        "temperature": args.temperature,
        "alpha": args.alpha,
        "cache_teacher": True,
    }
    if args.teacher_shifts:
        distilled.update(
            net="prototxt/hinton_distill.prototxt",
            shift=args.teacher_shifts,
            pad=JITTER,
            student_hidden=[800, 800],
            teacher_hidden=[1200, 1200],
        )
    else:
        distilled.update(
            net="prototxt/teacher_student.prototxt",
            student="mlp.prototxt",
            student_vars={"hidden": [800, 800]},
            teacher="mlp.prototxt",
            teacher_vars={"hidden": [1200, 1200]},
            student_logits="logits",
            teacher_logits="logits",
        )
    return {"teacher": teacher, "student": student, "distilled": distilled}


def result_path(args, name: str) -> Path:
    return Path(args.run) / "results" / f"{name}.json"


def run_one(args, name: str, solver: str, variables: dict, blobs=("logits",), weights=None, weights_map=None) -> dict:
    path = result_path(args, name)
    key = {"variables": variables, "weights": weights}
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("key") == json.loads(json.dumps(key)):
            print(f"{name}: done before ({done['errors']} errors), skipped", flush=True)
            return done
    claim = path.with_suffix(".claimed")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        claim.open("x").close()  # the other process (--jobs 2) may be training this one
    except FileExistsError:
        print(f"{name}: claimed by another process ({claim}), skipped", flush=True)
        return {}
    variables = {**variables, "run": str(Path(args.run) / name), "name": name}
    print(
        f"{name}: training ({variables['max_iter']} iterations), log {Path(args.run) / name / 'train.log'}", flush=True
    )
    run = train(solver, variables, Path(args.run) / name / "train.log", blobs, weights, weights_map)
    result = {
        "key": key,
        "name": name,
        "errors": run.errors("logits"),
        "accuracy": run.accuracy("logits"),
        "seconds": round(run.seconds, 1),
        "iters": run.iters,
        "snapshot": run.snapshot,
        "log": run.log,
    }
    if len(blobs) > 1:  # the soft target's blob, then the teacher on the unshifted digit if that differs
        result["teacher_errors"] = run.errors(blobs[1])
        result["agreement"] = run.agreement("logits", blobs[1])
        if len(blobs) > 2:
            result["unshifted_teacher_errors"] = run.errors(blobs[2])
    path.write_text(json.dumps(result, indent=1) + "\n")
    claim.unlink()
    print(f"{name}: {result['errors']} test errors in {result['seconds']:.0f} s", flush=True)
    return result


def run_students(args, config: dict) -> None:
    for seed in args.seeds:
        run_one(args, f"student_seed{seed}", "solvers/mlp_solver.prototxt", {**config["student"], "random_seed": seed})


def run_distilled(args, config: dict, teacher: dict) -> None:
    for seed in args.seeds:
        run_one(
            args,
            f"distilled_seed{seed}",
            "solvers/teacher_student_solver.prototxt",
            {**config["distilled"], "random_seed": seed},
            blobs=("logits", "t_mean_logits", "t_logits") if args.teacher_shifts else ("logits", "t_logits"),
            weights=teacher["snapshot"],
            weights_map="*=t_*",
        )


def wait_for_teacher(args, config: dict) -> dict:
    """The teacher's result once the run with these settings has finished (not an older run's)."""
    path = result_path(args, "teacher")
    key = json.loads(json.dumps({"variables": config["teacher"], "weights": args.teacher_weights}))
    while True:
        if path.is_file():
            done = json.loads(path.read_text())
            if done.get("key") == key:
                return done
        time.sleep(10)


def spread(values: list[int]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.1f} +- {sd:4.1f}  (min {min(values)}, max {max(values)}, n={len(values)}: {values})"


def report(args) -> int:
    results = {p.stem: json.loads(p.read_text()) for p in sorted((Path(args.run) / "results").glob("*.json"))}
    teacher = results.get("teacher")
    alone = [results[f"student_seed{s}"]["errors"] for s in args.seeds if f"student_seed{s}" in results]
    distilled = [results[f"distilled_seed{s}"]["errors"] for s in args.seeds if f"distilled_seed{s}" in results]
    lines = [
        f"Hinton et al. 2015 MNIST: test errors of 10,000 (paper: teacher {PAPER['teacher']}, student "
        f"{PAPER['student']}, distilled {PAPER['distilled']})",
        f"  settings: teacher {args.teacher_epochs} epochs (SGD lr {args.teacher_lr}, dropout {args.teacher_dropout}, "
        f"input dropout {args.teacher_input_dropout}), students {args.epochs} epochs ({args.solver_type} "
        f"lr {args.lr}), T = {args.temperature}, alpha = {args.alpha}, seeds {args.seeds}"
        + (f"; teacher started from {args.teacher_weights}" if args.teacher_weights else ""),
        f"  teacher 784-1200-1200-10 dropout+jitter: {teacher['errors'] if teacher else '-'}"
        + (f"  ({teacher['seconds']:.0f} s)" if teacher else ""),
        f"  student 784-800-800-10 alone:            {spread(alone)}",
        f"  student distilled at T = {args.temperature:g}:          {spread(distilled)}",
    ]
    agreements = [results[f"distilled_seed{s}"].get("agreement") for s in args.seeds if f"distilled_seed{s}" in results]
    if agreements:
        lines.append(f"  distilled-teacher agreement on the test set: {', '.join(f'{a:.4f}' for a in agreements)}")
    soft = next((results[f"distilled_seed{s}"] for s in args.seeds if f"distilled_seed{s}" in results), None)
    if soft and "unshifted_teacher_errors" in soft:
        lines.append(
            f"  soft targets: the teacher averaged over its translations of up to {args.teacher_shifts} pixels, "
            f"{soft['teacher_errors']} test errors (the teacher on the digit alone: {soft['unshifted_teacher_errors']})"
        )
    status = 0
    if alone and distilled:
        reduction = 1 - statistics.mean(distilled) / statistics.mean(alone)
        ok = reduction >= 0.30
        status = 0 if ok else 1
        lines.append(
            f"  error reduction by distillation: {100 * reduction:.1f}% (target >= 30%): {'PASS' if ok else 'FAIL'}"
        )
    seconds = sum(r.get("seconds", 0) for r in results.values())
    lines.append(f"  training time (sum over runs): {seconds / 60:.1f} min; results in {Path(args.run) / 'results'}")
    text = "\n".join(lines)
    print(text, flush=True)
    (Path(args.run) / "report.txt").write_text(text + "\n")
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"), help="MNIST IDX folder")
    parser.add_argument("--run", default="runs/hinton", help="output folder (data, logs, snapshots, results)")
    parser.add_argument("--epochs", type=float, default=20, help="epochs of each student (alone and distilled)")
    parser.add_argument("--teacher-epochs", type=float, default=80, help="epochs of the teacher")
    parser.add_argument(
        "--solver-type",
        default="Adam",
        help="students' solver (Adam: the T^2-scaled soft loss has small gradients, which plain SGD fits slowly)",
    )
    parser.add_argument("--lr", type=float, default=0.001, help="students' base_lr (poly decay to 0)")
    parser.add_argument("--teacher-lr", type=float, default=0.1, help="teacher's base_lr (SGD, momentum 0.9, poly)")
    parser.add_argument("--teacher-dropout", type=float, default=0.3, help="teacher's dropout on the hidden layers")
    parser.add_argument("--teacher-input-dropout", type=float, default=0.0, help="teacher's dropout on the input")
    parser.add_argument(
        "--teacher-weights", help="caffemodel to start the teacher from (e.g. a shorter run's, to train it longer)"
    )
    parser.add_argument(
        "--teacher-shifts",
        type=int,
        default=2,
        help="soft targets averaged over the teacher's translations of up to N pixels (prototxt/hinton_distill"
        ".prototxt; the student still sees only the unshifted digits); 0: the teacher on the digit alone",
    )
    parser.add_argument("--temperature", type=float, default=20.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the soft loss (hard labels: 1 - alpha)")
    parser.add_argument("--seeds", default="1,2,3", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes: N > 1 trains the students alone in N - 1 helpers, which then "
        "share the distilled runs with the main process once the teacher is done",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1 is fastest on a busy CPU)")
    parser.add_argument("--part", default="all", choices=["all", "data", "teacher", "students", "distilled", "report"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = settings(args)
    if args.part in ("all", "data"):
        started = time.perf_counter()
        prepare_data(Path(args.run) / "data", args.mnist, JITTER)
        print(f"data ready in {Path(args.run) / 'data'} ({time.perf_counter() - started:.0f} s)", flush=True)
    helpers = []
    if args.part == "all":
        for stale in (Path(args.run) / "results").glob("*.claimed"):
            stale.unlink()  # left by an interrupted run
        given = argv if argv is not None else sys.argv[1:]
        for _ in range(args.jobs - 1):
            helpers.append(subprocess.Popen([sys.executable, __file__, *given, "--part", "students"]))
    if args.part == "students" or (args.part == "all" and not helpers):
        run_students(args, config)
        if args.part == "students" and args.jobs > 1:
            run_distilled(
                args, config, wait_for_teacher(args, config)
            )  # helping the main process once its teacher is done
    if args.part in ("all", "teacher"):
        run_one(args, "teacher", "solvers/mlp_solver.prototxt", config["teacher"], weights=args.teacher_weights)
    if args.part in ("all", "distilled"):
        run_distilled(args, config, wait_for_teacher(args, config))
    for helper in helpers:
        if helper.wait() != 0:
            print(f"a helper process failed (exit {helper.returncode})", flush=True)
    return report(args) if args.part in ("all", "report") else 0


if __name__ == "__main__":
    sys.exit(main())
