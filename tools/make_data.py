#!/usr/bin/env python3
"""`make data`: build data/mnist (and data/cifar10 when available) LMDBs: `python tools/make_data.py --help`."""

import sys

from pipeline.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
