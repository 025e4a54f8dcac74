#!/usr/bin/env python3
"""Caffe's convert_cifar_data tool on our data package: `python tools/convert_cifar_data.py --help`."""

import sys

from pipeline.data.convert import main_convert_cifar

if __name__ == "__main__":
    sys.exit(main_convert_cifar())
