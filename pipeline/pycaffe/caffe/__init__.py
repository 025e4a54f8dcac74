"""A minimal stand-in for pycaffe's `caffe` module, so that Python layers written for Caffe import unchanged.

The pipeline puts this folder's parent on `sys.path` only when a net has a `type: "Python"` layer and
`import caffe` would otherwise fail: a real pycaffe, where one is installed, is never shadowed. It offers what a
layer module needs: `caffe.Layer` (the base class), the phases `caffe.TRAIN` and `caffe.TEST` (0 and 1, as in
pycaffe) and `caffe.proto.caffe_pb2` (this project's Caffe protobuf messages). Nets, solvers and `caffe.io`
are not here: build and train with the pipeline itself.
"""

from pipeline.proto.caffe_pb2 import TEST, TRAIN

__version__ = "1.0.0"
__all__ = ["TEST", "TRAIN", "Layer"]


class Layer:
    """Base of a Python layer, as pycaffe's `caffe.Layer`.

    The pipeline constructs the subclass named by `python_param.layer` with the layer's LayerParameter, sets
    `param_str` (python_param.param_str) and `phase` (caffe.TRAIN or caffe.TEST), then calls `setup` and
    `reshape` once; each forward pass calls `reshape` then `forward`, and training calls `backward`.
    `self.blobs` holds the layer's learnable blobs: `self.blobs.add_blob(*shape)` (in `setup`) adds one,
    zero-filled; its `.diff` is the gradient `backward` writes.
    """

    type = "Python"

    def __init__(self, param=None):
        self.layer_param = param
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = TRAIN

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} defines no forward(bottom, top)")

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__} defines no backward(top, propagate_down, bottom)")
