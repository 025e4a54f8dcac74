"""Caffe's protobuf schema (caffe.proto) and its generated Python module."""

from pipeline.proto import caffe_pb2

__all__ = ["caffe_pb2"]
