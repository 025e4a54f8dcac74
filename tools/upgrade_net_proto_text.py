#!/usr/bin/env python3
"""Caffe's upgrade_net_proto_text: `tools/upgrade_net_proto_text.py IN OUT` (pipeline.weights.upgrade_tools)."""

import sys

from pipeline.cli.tools import upgrade_net_proto_text

if __name__ == "__main__":
    sys.exit(upgrade_net_proto_text())
