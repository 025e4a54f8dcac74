#!/usr/bin/env python3
"""Caffe's convert_mnist_data tool on our data package: `python tools/convert_mnist_data.py --help`."""

import sys

from pipeline.data.convert import main_convert_mnist

if __name__ == "__main__":
    sys.exit(main_convert_mnist())
