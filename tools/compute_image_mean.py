#!/usr/bin/env python3
"""Caffe's compute_image_mean tool on our data package: `python tools/compute_image_mean.py --help`."""

import sys

from pipeline.data.convert import main_compute_image_mean

if __name__ == "__main__":
    sys.exit(main_compute_image_mean())
