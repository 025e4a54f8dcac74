#!/usr/bin/env python3
"""Fine-tuning: replace the head, train it, then the whole net:
`python tools/finetune.py --help`, or the `finetune` console script
(the tool is pipeline/cli/tools/finetune.py).
"""

import sys

from pipeline.cli.tools.finetune import main

if __name__ == "__main__":
    sys.exit(main())
