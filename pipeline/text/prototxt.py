"""Reading (templated) prototxt files: rendered by pipeline/text/template.py, parsed by
pipeline/text/prototxt_parse.py, nets upgraded to the current format. Importing this module makes `embed_net`
(pipeline/text/compose.py) available in templates.
"""

from __future__ import annotations

from pathlib import Path

import pipeline.text.compose  # noqa: F401  (registers embed_net into templates)
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt_parse import parse_text
from pipeline.text.template import render_file, render_text
from pipeline.text.upgrade import upgrade_net

__all__ = ["net_from_string", "parse_text", "read_net", "read_solver", "read_text"]


def read_text(path: str | Path, variables: dict | None = None) -> str:
    """The rendered text of a (possibly templated) prototxt file."""
    return render_file(path, variables)


def read_net(path: str | Path, variables: dict | None = None) -> caffe_pb2.NetParameter:
    """Render and parse a net prototxt; V0/V1 nets are upgraded to the current format."""
    text = read_text(path, variables)
    return upgrade_net(parse_text(text, caffe_pb2.NetParameter(), str(path)), str(path))


def read_solver(path: str | Path, variables: dict | None = None) -> caffe_pb2.SolverParameter:
    text = read_text(path, variables)
    return parse_text(text, caffe_pb2.SolverParameter(), str(path))


def net_from_string(text: str, variables: dict | None = None, path: str = "<string>") -> caffe_pb2.NetParameter:
    rendered = render_text(text, variables, path)
    return upgrade_net(parse_text(rendered, caffe_pb2.NetParameter(), path, template=text), path)
