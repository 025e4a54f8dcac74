"""Where the default (fast) mode's training loss leaves Caffe's, under other kernel choices.

    .venv/bin/python bench/solver_horizons.py [--seeds 4] [--case lenet_sgd_inv ...]

Runs every case of ../shared/caffe-reference/train to max_iter in the default mode, once per kernel
configuration (environment variables that make torch's oneDNN, MKL and ATen pick other kernels, and one
thread: a proxy for another CPU's kernels) and once per seed with half the initial weights moved by one ulp
(a generic last-bit perturbation), and prints per case the first iteration whose loss is more than 1e-3 from
Caffe's trace, and the largest relative difference of 10-iteration loss means. tests/test_solver_conformance.py
takes its horizons from these figures (its HORIZON comment has the last measurement, with 12 seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "caffe-reference" / "train"
SCALAR = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
CONFIGS = {
    "default": {},
    "one thread": {"OMP_NUM_THREADS": "1"},
    "oneDNN AVX": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "oneDNN SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "MKL AVX": {"MKL_ENABLE_INSTRUCTIONS": "AVX"},
    "ATen scalar": {"ATEN_CPU_CAPABILITY": "default"},
    "all scalar/SSE": SCALAR,
    "one thread, all scalar/SSE": {"OMP_NUM_THREADS": "1", **SCALAR},
    "one thread, AVX": {"OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX", "MKL_ENABLE_INSTRUCTIONS": "AVX"},
}
WINDOW = 10


def run_case(case: str, seed: int) -> dict:
    """One case to max_iter (in this process's kernel configuration): per-iteration relative loss errors."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import test_solver_conformance as conformance
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = conformance.mirror(case, Path(tmp))
        os.chdir(folder)
        solver = conformance.make_solver(folder)
        solver.load_weights("init.caffemodel")
        if seed:  # half the weights one ulp up
            rng = np.random.default_rng(seed)
            with torch.no_grad():
                for p in solver.net.learnable_params:
                    w = p.tensor.detach().numpy().copy()
                    up = np.nextafter(w, np.float32(np.inf), dtype=np.float32)
                    p.tensor.copy_(torch.from_numpy(np.where(rng.random(w.shape) < 0.5, up, w)))
        recorder = conformance.Recorder(solver)
        solver.solve()
    trace = {int(r["iter"]): r for r in csv.DictReader(open(TRAIN / case / "trace.csv"))}
    losses = [
        (float(loss), float(trace[it]["net_loss"]), float(sm), float(trace[it]["loss"]))
        for it, _, loss, sm in recorder.rows
    ]
    return {"losses": losses}


def summarize(losses) -> tuple[int | None, float]:
    a = np.array(losses, dtype=np.float64)
    rel = np.maximum(abs(a[:, 0] - a[:, 1]) / abs(a[:, 1]), abs(a[:, 2] - a[:, 3]) / abs(a[:, 3]))
    leaves = next((i for i, r in enumerate(rel) if r > 1e-3), None)
    means = [abs(a[i : i + WINDOW, 0].mean() / a[i : i + WINDOW, 1].mean() - 1) for i in range(0, len(a), WINDOW)]
    return leaves, max(means)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="a case of ../shared/caffe-reference/train (default: all)")
    parser.add_argument("--seeds", type=int, default=4, help="runs with one-ulp weight perturbations")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(args.worker[0], int(args.worker[1]))))
        return 0
    cases = args.case or sorted(
        p.name for p in TRAIN.iterdir() if p.is_dir() and p.name not in ("_data", "lenet_resume")
    )
    runs = [(name, env, 0) for name, env in CONFIGS.items()] + [
        (f"ulp seed {s}", {}, s) for s in range(1, args.seeds + 1)
    ]
    print("runs: " + ", ".join(name for name, _, _ in runs))
    print(f"{'case':26s} {'first iteration > 1e-3, per run':>60s}  min  worst {WINDOW}-iteration mean")
    for case in cases:
        found, worst = [], 0.0
        for _, env, seed in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", case, str(seed)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            leaves, mean = summarize(json.loads(out.splitlines()[-1])["losses"])
            found.append(leaves)
            worst = max(worst, mean)
        shown = " ".join("-" if x is None else str(x) for x in found)
        least = min((x for x in found if x is not None), default=None)
        print(f"{case:26s} {shown:>60s} {least if least is not None else '-':>4} {worst:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
