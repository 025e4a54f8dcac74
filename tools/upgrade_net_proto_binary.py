#!/usr/bin/env python3
"""Caffe's upgrade_net_proto_binary: `tools/upgrade_net_proto_binary.py IN OUT` (pipeline.weights.upgrade_tools)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.weights.upgrade_tools import upgrade_tool_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(upgrade_tool_main("binary"))
