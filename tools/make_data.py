#!/usr/bin/env python3
"""`make data`: build data/mnist (and data/cifar10 when available) LMDBs: `python tools/make_data.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
