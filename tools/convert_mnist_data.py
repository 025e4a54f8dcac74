#!/usr/bin/env python3
"""Caffe's convert_mnist_data tool on our data package: `python tools/convert_mnist_data.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.convert import main_convert_mnist  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_convert_mnist())
