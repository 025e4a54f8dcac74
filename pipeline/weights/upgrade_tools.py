"""Caffe's tools upgrade_net_proto_text and upgrade_net_proto_binary (tools/upgrade_net_proto_*.py run them):
a V0/V1 net prototxt or binary caffemodel rewritten in the current (V2 `layer`) format by pipeline/text/upgrade.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_write
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import parse_text, read_text
from pipeline.text.upgrade import net_needs_upgrade, net_to_text, upgrade_net
from pipeline.text.upgrade_v1 import net_needs_data_upgrade, upgrade_data_transformation
from pipeline.weights.caffemodel import parse_caffemodel, upgrade_caffemodel

log = logging.getLogger("pipeline")


def upgrade_net_proto_text(source: str | Path, destination: str | Path) -> bool:
    """Caffe's upgrade_net_proto_text: write `source` (a net prototxt) upgraded to V2 as text.

    Returns whether anything needed upgrading (the file is written either way, as Caffe's tool does).
    Raises PrototxtError when the file does not parse or cannot be fully upgraded.
    """
    net = parse_text(read_text(source), caffe_pb2.NetParameter(), str(source))
    needed = net_needs_upgrade(net)
    needs_data_upgrade = net_needs_data_upgrade(net)
    if needed:
        net = upgrade_net(net, str(source))
    else:
        log.warning("File already in latest proto format: %s", source)
    if needs_data_upgrade:
        net = upgrade_data_transformation(net)
    atomic_write(destination, net_to_text(net).encode("utf-8"))
    log.info("Wrote upgraded NetParameter text proto to %s", destination)
    return needed


def upgrade_net_proto_binary(source: str | Path, destination: str | Path) -> bool:
    """Caffe's upgrade_net_proto_binary: a binary NetParameter (a caffemodel) rewritten as V2, blobs unchanged.

    Returns whether anything needed upgrading. Raises WeightsError when the file cannot be read or upgraded.
    """
    net = parse_caffemodel(source)
    needed = net_needs_upgrade(net)
    if needed:
        net = upgrade_caffemodel(net, source)
    else:
        log.warning("File already in latest proto format: %s", source)
    data = net.SerializeToString()
    del net
    atomic_write(destination, data)
    log.info("Wrote upgraded NetParameter binary proto to %s", destination)
    return needed


def upgrade_tool_main(kind: str, argv: list[str] | None = None) -> int:
    """Command line of Caffe's upgrade_net_proto_text / upgrade_net_proto_binary (`kind` "text" or "binary").

    Exit status: 0 written, 1 usage, 2 the input does not parse or cannot be fully upgraded (nothing written).
    """
    what = {"text": "net prototxt", "binary": "binary caffemodel"}[kind]
    upgrade = {"text": upgrade_net_proto_text, "binary": upgrade_net_proto_binary}[kind]
    parser = argparse.ArgumentParser(
        prog=f"upgrade_net_proto_{kind}", description=f"Rewrite a V0/V1 {what} in the current (V2 `layer`) format."
    )
    parser.add_argument("source", help=f"{what} in any Caffe format (V0, V1, V2)")
    parser.add_argument("destination", help="where to write the V2 file (replaced atomically)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        upgrade(args.source, args.destination)
    except (PipelineError, OSError) as exc:
        print(f"upgrade_net_proto_{kind}: {exc}", file=sys.stderr)
        return 2
    return 0
