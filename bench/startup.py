"""Default-path start-up (issue 16): `import pipeline.net` and building LeNet (prototxt/lenet.prototxt, deploy,
default mode) in fresh interpreters, for one or more checkouts, runs interleaved; prints the median ms of each.

    python bench/startup.py [--runs 7] [TREE ...]     # TREE: a checkout (default: this one), put first on PYTHONPATH
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PROBE = """
import time
t0 = time.perf_counter()
import pipeline.net
t1 = time.perf_counter()
from pipeline.net import Net
from pipeline.text.prototxt import read_net
Net(read_net("prototxt/lenet.prototxt", {"deploy": True}), phase="TEST", seed=1)
t2 = time.perf_counter()
import json
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "build_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}))
"""


def probe(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=tree, env=env, capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for tree in args.trees:  # warm-up: the OS file cache and any first C++ build
        probe(tree)
    samples: dict[Path, list[dict]] = {tree: [] for tree in args.trees}
    for _ in range(args.runs):
        for tree in args.trees:
            samples[tree].append(probe(tree))
    for tree, runs in samples.items():
        medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        figures = ", ".join(f"{key} {value:.0f}" for key, value in medians.items())
        print(f"{tree}: {figures} (median of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
