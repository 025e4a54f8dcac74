"""Every net prototxt of BVLC Caffe 1.0's examples/ and models/ builds here (bench/bvlc_prototxts.py), in each
phase and stage, data sources stubbed: with a Caffe checkout in $BVLC_CAFFE_DIR (a folder or a git repository),
else those tests skip. The stubbing itself is tested on nets written here."""

from __future__ import annotations

import os

import pytest

from bench.bvlc_prototxts import ENV, Checkout, build_all, net_prototxts, states, stub_data_layers
from pipeline.net import Net
from pipeline.text.prototxt import net_from_string


def _checkout():
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        return Checkout(path)
    except FileNotFoundError:
        return None


CHECKOUT = _checkout()
FILES = net_prototxts(CHECKOUT) if CHECKOUT else []


@pytest.mark.skipif(CHECKOUT is None, reason=f"no BVLC Caffe checkout (set ${ENV})")
def test_the_checkout_has_caffe_1_0s_29_net_prototxts():
    assert len(FILES) == 29, FILES


@pytest.mark.skipif(CHECKOUT is None, reason=f"no BVLC Caffe checkout (set ${ENV})")
@pytest.mark.parametrize("name", FILES or ["(none)"])
def test_bvlc_prototxt_builds_in_every_state(name):
    rows = build_all(CHECKOUT, [name])
    assert rows and all(r.error is None for r in rows), [(r.state, r.error) for r in rows if r.error]


NET = """
name: "stubs"
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { crop_size: 24 mean_file: "nowhere/mean.binaryproto" }
  data_param { source: "somewhere/mnist_train_lmdb" batch_size: 8 } }
layer { name: "d" type: "ImageData" top: "data" top: "label" include { phase: TEST stage: "a" }
  image_data_param { source: "list.txt" batch_size: 4 new_height: 20 new_width: 30 } }
layer { name: "d" type: "HDF5Data" top: "data" top: "label" include { phase: TEST stage: "b" }
  hdf5_data_param { source: "examples/hdf5_classification/data/test.txt" batch_size: 5 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_data_layers_become_dummy_data_of_the_shapes_caffe_gives():
    net = stub_data_layers(net_from_string(NET))
    assert [layer.type for layer in net.layer[:3]] == ["DummyData"] * 3
    assert [layer.name for layer in net.layer[:3]] == ["d"] * 3
    assert [list(r.stage) for layer in net.layer[:3] for r in layer.include] == [[], ["a"], ["b"]]
    assert states(net) == [("TRAIN", ()), ("TEST", ("a",)), ("TEST", ("b",))]
    shapes = {
        state: {name: Net(net, phase, stages=stages).blob_shapes[name] for name in ("data", "label")}
        for state in states(net)
        for phase, stages in [state]
    }
    assert shapes[("TRAIN", ())] == {"data": (8, 1, 24, 24), "label": (8,)}  # MNIST, cropped
    assert shapes[("TEST", ("a",))] == {"data": (4, 3, 20, 30), "label": (4,)}  # ImageData's new size
    assert shapes[("TEST", ("b",))] == {"data": (5, 4), "label": (5,)}  # the HDF5 example's 4 features
