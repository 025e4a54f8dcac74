"""Fused distillation op vs the composite PyTorch expression, forward+backward, on the CPU.

    .venv/bin/python bench/distill_op.py

Target (issue 4): at least 2x faster at batch 256 x 1000 classes and 64 x 10.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import interleaved_median, machine  # noqa: E402
from pipeline.ops.distill import distill_loss  # noqa: E402

T, ALPHA = 4.0, 0.7


def composite(s, t, label):
    soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return ALPHA * soft + (1 - ALPHA) * F.cross_entropy(s, label)


def main() -> int:
    print(f"distillation loss, forward+backward, T={T}, alpha={ALPHA}; {machine()}")
    worst = float("inf")
    for rows, classes in [(256, 1000), (64, 10)]:
        s = torch.randn(rows, classes, requires_grad=True)
        t, label = torch.randn(rows, classes), torch.randint(0, classes, (rows,))
        ours = distill_loss(s, t, label, temperature=T, alpha=ALPHA)
        torch.testing.assert_close(ours, composite(s, t, label), rtol=1e-4, atol=1e-5)

        def run_ours(s=s, t=t, label=label):
            distill_loss(s, t, label, temperature=T, alpha=ALPHA).backward()

        def run_composite(s=s, t=t, label=label):
            composite(s, t, label).backward()

        reps = 20 if classes > 100 else 200
        times = interleaved_median({"op": run_ours, "composite": run_composite}, rounds=15, reps=reps)
        speedup = times["composite"] / times["op"]
        worst = min(worst, speedup)
        print(
            f"{rows:4d} x {classes:5d}: op {times['op'] * 1e6:8.1f} us  composite {times['composite'] * 1e6:8.1f} us"
            f"  speed-up {speedup:.2f}x"
        )
    print(f"worst speed-up {worst:.2f}x (target >= 2): {'PASS' if worst >= 2 else 'FAIL'}")
    return 0 if worst >= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
