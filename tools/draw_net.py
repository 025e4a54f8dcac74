#!/usr/bin/env python3
"""Caffe's python/draw_net.py, redone: a net prototxt (or Jinja template) drawn with graphviz.

Usage: tools/draw_net.py NET OUT.png|svg|pdf|dot [--rankdir LR|TB] [--phase TRAIN|TEST|ALL] [--set k=v ...]
Exit status: 0 drawn, 2 the net does not parse, 3 graphviz's `dot` is missing (the .dot file is written).
"""

import sys

from pipeline.viz.cli import draw_main

if __name__ == "__main__":
    sys.exit(draw_main())
