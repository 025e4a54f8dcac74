#!/usr/bin/env python3
"""Net surgery: weights by layer name (copy, rename, drop, prefix, merge, re-initialise):
`python tools/net_surgery.py --help`, or the `net_surgery` console script
(the tool is pipeline/cli/tools/net_surgery.py).
"""

import sys

from pipeline.cli.tools.net_surgery import main

if __name__ == "__main__":
    sys.exit(main())
