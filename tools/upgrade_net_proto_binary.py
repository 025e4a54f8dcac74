#!/usr/bin/env python3
"""Caffe's upgrade_net_proto_binary: `tools/upgrade_net_proto_binary.py IN OUT` (pipeline.weights.upgrade_tools)."""

import sys

from pipeline.cli.tools import upgrade_net_proto_binary

if __name__ == "__main__":
    sys.exit(upgrade_net_proto_binary())
