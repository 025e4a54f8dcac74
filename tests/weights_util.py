"""The weights tests' tiny net: every blob kind Caffe saves, filled with seeded random values (the `tiny_file`
fixture, in conftest.py, saves it as a caffemodel)."""

import torch

from pipeline.net import Net
from pipeline.text.prototxt import net_from_string

# Every blob kind: conv weights/bias, BatchNorm's three, Scale, a 0-axis PReLU slope, two InnerProducts sharing
# their weights by ParamSpec name, and a Split (conv feeds both).
TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" prelu_param { channel_shared: true } }
layer { name: "ip_a" type: "InnerProduct" bottom: "conv" top: "a" param { name: "shared_w" }
  inner_product_param { num_output: 5 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "conv" top: "b" param { name: "shared_w" }
  inner_product_param { num_output: 5 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "out" }
"""


def tiny_net(seed: int = 0, text: str = TINY, phase: str = "TEST") -> Net:
    net = Net(net_from_string(text), phase=phase, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blobs in net.params.values():
            for blob in blobs:
                blob.copy_(torch.randn(blob.shape, generator=generator))
    return net
