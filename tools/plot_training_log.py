#!/usr/bin/env python3
"""Caffe's plot_training_log.py, redone: curves of one or more runs (loss, accuracy, lr) as PNG/SVG.

Usage: tools/plot_training_log.py LOG [LOG ...] -o OUT.png [-o OUT.svg] [--label L ...] [--x iters|seconds]
       [--kind loss,accuracy,lr] [--normalise] [--phase train|test|both] [--outputs loss,ts_loss]
Exit status: 0 drawn (warnings on stderr), 1 nothing to draw, 2 usage or unreadable input.
"""

import sys

from pipeline.viz.cli import plot_main

if __name__ == "__main__":
    sys.exit(plot_main())
