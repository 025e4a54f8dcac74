#!/usr/bin/env python3
"""Layer-at-a-time training from a schedule:
`python tools/train_layerwise.py --help`, or the `train_layerwise` console script
(the tool is pipeline/cli/tools/train_layerwise.py).
"""

import sys

from pipeline.cli.tools.train_layerwise import main

if __name__ == "__main__":
    sys.exit(main())
