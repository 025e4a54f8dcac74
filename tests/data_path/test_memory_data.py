"""MemoryData: batches from arrays given with set_input_arrays (pycaffe's API), in order, wrapping."""

import numpy as np
import pytest
import torch

from pipeline.data.errors import LayerDataError
from pipeline.errors import DataError, NetBuildError
from pipeline.net.layers.memory_data import set_input_arrays

from .helpers import data_net

LAYER = (
    'layer { name: "mem" type: "MemoryData" top: "data" top: "label" '
    "memory_data_param { batch_size: 2 channels: 1 height: 3 width: 2 } }"
)


def test_batches_in_order_and_wrap():
    net = data_net(LAYER)
    assert net.blob_shapes == {"data": (2, 1, 3, 2), "label": (2,)}
    data = np.arange(6 * 6, dtype=np.float64).reshape(6, 1, 3, 2)
    labels = np.arange(6)
    set_input_arrays(net, data, labels)
    for rows in ([0, 1], [2, 3], [4, 5], [0, 1]):
        out = net.forward()
        assert out["data"].dtype == torch.float32
        np.testing.assert_array_equal(out["data"].numpy(), data[rows].astype(np.float32))
        np.testing.assert_array_equal(out["label"].numpy(), labels[rows].astype(np.float32))
    net.layer("mem").set_input_arrays(data[:2] + 100, labels[:2].reshape(2, 1, 1, 1))
    np.testing.assert_array_equal(net.forward()["data"].numpy(), (data[:2] + 100).astype(np.float32))


@pytest.mark.parametrize(
    "data_shape, label_shape, message",
    [
        ((4, 1, 3, 3), (4,), "data array has shape"),
        ((4, 1, 3, 2), (4, 2), "labels array has shape"),
        ((4, 1, 3, 2), (6,), "same first dimension"),
        ((3, 1, 3, 2), (3,), "multiple of batch_size"),
    ],
)
def test_bad_arrays_name_the_layer(data_shape, label_shape, message):
    layer = data_net(LAYER).layer("mem")
    with pytest.raises(LayerDataError, match=f"layer 'mem' \\(MemoryData\\): .*{message}"):
        layer.set_input_arrays(np.zeros(data_shape), np.zeros(label_shape))


def test_forward_before_input_and_bad_parameters():
    with pytest.raises(DataError, match="layer 'mem' .*set_input_arrays"):
        data_net(LAYER).forward()
    with pytest.raises(NetBuildError, match="must be specified and positive"):
        data_net(LAYER.replace("width: 2", "width: 0"))
    with pytest.raises(NetBuildError, match="no MemoryData layer"):
        set_input_arrays(
            data_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }'),
            np.zeros((1, 1, 1, 1)),
            np.zeros(1),
        )
