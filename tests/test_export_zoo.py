"""The model zoo through the `convert` verb: every deploy net converted from a caffemodel we generate to ONNX (run in
onnxruntime) and safetensors (the big nets are marked slow), and the train/test-only nets through their deploy form."""

from __future__ import annotations

import pytest
import torch
from export_util import TOL, ZOO_FAST, ZOO_SLOW, _zoo_id, assert_onnx_matches, logits_blob, zoo_deploy
from model_zoo_util import ZOO

from pipeline.export import ConvertRequest, convert, net_from_safetensors
from pipeline.net import Net
from pipeline.text.prototxt import read_net
from pipeline.weights.io import save_caffemodel

#: Templates with no deploy form: converted from their train/test net (data layers become an Input of this shape).
ZOO_TRAIN_TEST = {"hinton_mnist": (1, 1, 28, 28), "teacher_student": (1, 1, 28, 28)}


# ----- the model zoo, converted from caffemodels we generate --------------------------------------------------------
ZOO_ALL = [pytest.param(t, v, id=_zoo_id(t, v)) for t, v in ZOO_FAST] + [
    pytest.param(t, v, id=_zoo_id(t, v), marks=pytest.mark.slow) for t, v in ZOO_SLOW
]


def test_zoo_lists_are_complete():
    # hinton_distill.prototxt only trains a student (25 teacher copies on crops of padded LMDB digits); what it
    # deploys is that student, mlp.prototxt, converted with the rest.
    templates = {p.stem for p in ZOO.glob("*.prototxt")} - {"macros", "hinton_distill"}
    assert templates == {t for t, _ in ZOO_FAST + ZOO_SLOW} | set(ZOO_TRAIN_TEST)


@pytest.mark.parametrize("template, variables", ZOO_ALL)
def test_zoo_deploy_net_converts_from_a_caffemodel(tmp_path, monkeypatch, template, variables):
    variables = {**variables, "deploy": True, "deploy_batch": 1}
    net = zoo_deploy(template, **variables)
    weights = tmp_path / f"{template}.caffemodel"
    save_caffemodel(net, weights)
    request = dict(model=ZOO / f"{template}.prototxt", weights=[weights], variables=variables, verify=False)
    monkeypatch.chdir(tmp_path)  # outputs go to the current folder
    # The logits are output too: a saturated softmax would hide differences.
    outputs = ["prob", logits_blob(net)]
    onnx_result = convert(ConvertRequest(to="onnx", outputs=outputs, **request))
    assert onnx_result.missing == [] and onnx_result.out.resolve() == tmp_path / f"{template}.onnx"
    assert_onnx_matches(onnx_result.net, onnx_result.out, outputs, batches=(1, 2))
    pt_result = convert(ConvertRequest(to="safetensors", **request))
    rebuilt = net_from_safetensors(pt_result.out)
    x = torch.randn(2, *net.blob_shapes["data"][1:])
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["prob"], net(x)["prob"])


@pytest.mark.parametrize("template", ZOO_TRAIN_TEST)
def test_zoo_train_test_net_converts_through_its_deploy_form(tmp_path, template):
    shape = ZOO_TRAIN_TEST[template]
    train = Net(read_net(ZOO / f"{template}.prototxt", {"data": "dummy", "batch": 2}), phase="TRAIN", seed=2)
    save_caffemodel(train, tmp_path / "trained.caffemodel")
    result = convert(
        ConvertRequest(
            model=ZOO / f"{template}.prototxt",
            weights=[tmp_path / "trained.caffemodel"],
            to="onnx",
            out=tmp_path / "trained.onnx",
            input_shapes={"data": shape},
        )
    )
    assert result.net.input_names == ["data"] and result.missing == []
    assert result.preprocessing.source == "mnist" and result.onnx_error <= TOL
    assert_onnx_matches(result.net, result.out, batches=(3,))
