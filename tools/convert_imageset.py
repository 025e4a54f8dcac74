#!/usr/bin/env python3
"""Caffe's convert_imageset tool on our data package: `python tools/convert_imageset.py --help`."""

import sys

from pipeline.data.convert import main_convert_imageset

if __name__ == "__main__":
    sys.exit(main_convert_imageset())
