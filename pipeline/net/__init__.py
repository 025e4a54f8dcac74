"""A NetParameter built into a torch module that behaves like a Caffe Net (`net`), its layers (`layers`, one
module per Caffe type), fillers, pycaffe-style accessors, per-layer timing and the soft-target cache.

Imports the package root, pipeline.proto, pipeline.ops, pipeline.exact, pipeline.text, pipeline.weights (layers
read .binaryproto blobs) and pipeline.data (the data layers' sources); never solvers or the command line.
"""

from pipeline.net.accessors import Blob, LearnableParam
from pipeline.net.net import AUTO_TOP, PHASES, Net, build_net

__all__ = ["AUTO_TOP", "PHASES", "Blob", "LearnableParam", "Net", "build_net"]
