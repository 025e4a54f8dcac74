#!/usr/bin/env python3
"""Caffe's tools/extra/parse_log.py, robust: a training log (Caffe's or ours) to CSV/JSON tables.

Usage: tools/parse_log.py LOG OUTDIR [--json] [--compat bvlc] [--delimiter ,]
Writes OUTDIR/<log name>.train and .test (BVLC's names) and, with --json, <log name>.json.
Exit status: 0 written (warnings on stderr), 1 nothing to tabulate (empty or foreign file), 2 usage or unreadable.
"""

import sys

from pipeline.viz.cli import parse_log_main

if __name__ == "__main__":
    sys.exit(parse_log_main())
