#!/usr/bin/env python3
"""Convert a Caffe model: tools/convert.py --model deploy.prototxt --weights x.caffemodel
--to onnx|safetensors|pt|pt2|caffemodel|h5 [--out PATH]. The same as `python -m pipeline convert` (see
pipeline/cli/convert.py for every flag): writes to the current folder unless --out says where.

Exit status: 0 written (output path printed), 1 a bad model, weights file or export, 2 usage.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
