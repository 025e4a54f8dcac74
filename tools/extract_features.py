#!/usr/bin/env python3
"""Caffe's extract_features (Caffe's positional form too):
`python tools/extract_features.py --help`, or the `extract_features` console script
(the tool is pipeline/cli/tools/extract_features.py).
"""

import sys

from pipeline.cli.tools.extract_features import main

if __name__ == "__main__":
    sys.exit(main())
