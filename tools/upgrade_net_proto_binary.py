#!/usr/bin/env python3
"""Caffe's upgrade_net_proto_binary: rewrite a V0/V1 binary caffemodel as V2 (`layer`), blobs unchanged.

Usage: tools/upgrade_net_proto_binary.py IN.caffemodel OUT.caffemodel
Exit status: 0 written, 1 usage, 2 the input does not parse or cannot be fully upgraded (nothing written).
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import PipelineError  # noqa: E402
from pipeline.upgrade import upgrade_net_proto_binary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="binary caffemodel in any Caffe format (V0, V1, V2)")
    parser.add_argument("destination", help="where to write the V2 caffemodel (replaced atomically)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        upgrade_net_proto_binary(args.source, args.destination)
    except (PipelineError, OSError) as exc:
        print(f"upgrade_net_proto_binary: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
