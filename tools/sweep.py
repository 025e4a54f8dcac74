#!/usr/bin/env python3
"""Train one solver template over a grid of variables and compare the runs in one table and one plot.

Usage: tools/sweep.py --solver S --grid temperature=1,2,4 --grid alpha=0.5,0.9 [--set name=value ...]
       [--jobs N] [--out runs/sweep_x] [--run-var run] [--weights W] [--phase train|test|both] [--outputs a,b]
Each run: `python -m pipeline train --solver S --set k=v ... --set run=<out>/<k-v_...>` (logs, snapshots and its
report in that folder). Writes <out>/sweep.csv, sweep.md, sweep.png and sweep.svg.
Exit status: 0 every run trained, 1 some run failed, 2 the sweep could not start.
"""

import sys

from pipeline.sweep.run import main

if __name__ == "__main__":
    sys.exit(main())
