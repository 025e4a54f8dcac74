"""`caffe.proto.caffe_pb2`: this project's Caffe protobuf messages (pipeline/proto/caffe_pb2.py)."""

import sys

from pipeline.proto import caffe_pb2

sys.modules[__name__ + ".caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]
