"""Real third-party Caffe models (../shared/caffe-models) and the real-Caffe reference nets
(../shared/caffe-reference/forward) through the converter: each converts, the ONNX export matches our PyTorch
output in onnxruntime within 1e-4 of the output's scale, and (slow) the converted models score exactly the
accuracy real Caffe scored on the full test sets of ../shared/data. Skipped cleanly without ../shared.

Blob-by-blob agreement of our nets with real Caffe is tests/test_conformance.py's job; here the converted
model's final output is also held to real Caffe's, on the reference inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED, shared_cases, shared_path
from reference import scale_tolerance

from bench.convert_accuracy import MODELS, REQUIRED, accuracies, convert_model
from pipeline.export import DeployModule, ExportError, compare_onnx, deploy_param, export_onnx, net_from_safetensors
from pipeline.export.deploy import build_net_for_weights
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import parse_text

TOL = 1e-4
#: The reference case (real Caffe's blobs on real inputs) recorded for each model of ../shared/caffe-models.
REFERENCE_CASE = {
    "lenet_v2": "lenet_ethereon",
    "lenet_v1": "lenet_everpeace_v1",
    "cifar10_quick_v1": "cifar10_quick_everpeace",
    "cifar10_full_h5": "cifar10_full_jwcom79_h5",
    "mobilenet_cifar": "mobilenet_cifar_lijianfei",
    "resnet20_cifar": "resnet20_junyuseu",
}
BY_NAME = {m.name: m for m in MODELS}
#: Reference nets with a layer that has no export path (its output size depends on input values).
NOT_EXPORTABLE = {"cov_index_layers": "Filter"}


def test_every_real_model_is_listed():
    folders = shared_cases("caffe-models")
    if not folders:
        pytest.skip(f"{SHARED}/caffe-models not available (../shared absent)")
    assert set(folders) == set(BY_NAME) == set(REFERENCE_CASE)


@pytest.mark.parametrize("name", list(REFERENCE_CASE))
def test_real_model_converts_and_its_onnx_export_matches(tmp_path, name):
    shared_path("caffe-models", name)
    spec = BY_NAME[name]
    folder = shared_path("caffe-reference", "forward", REFERENCE_CASE[name])
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "input.npz") as npz:
        image = npz["data" if "data" in npz.files else "Data1"]
    onnx_result = convert_model(spec, tmp_path, "onnx")
    assert onnx_result.missing == [], "layers of the deploy net the caffemodel has no weights for"
    assert onnx_result.onnx_error is not None and onnx_result.onnx_error <= TOL
    module = DeployModule(onnx_result.net)
    comparison = compare_onnx(module, onnx_result.out, (torch.from_numpy(image),))
    assert comparison.ok(TOL), comparison.errors
    # The net rebuilt from the converted safetensors file alone gives real Caffe's blobs on the same images.
    rebuilt = net_from_safetensors(convert_model(spec, tmp_path, "safetensors").out)
    with torch.no_grad():
        (ours,) = rebuilt(torch.from_numpy(image)).values()
    compared = 0
    with np.load(folder / "blobs.npz") as blobs:
        for blob in set(blobs.files) & set(rebuilt.blob_shapes) - set(rebuilt.input_names):
            caffe = blobs[blob]
            assert np.abs(rebuilt.blobs[blob].data.numpy() - caffe).max() <= scale_tolerance(caffe), blob
            compared += 1
    assert compared >= 5
    if meta.get("predicted_classes"):
        assert ours.reshape(len(image), -1).argmax(1).tolist() == meta["predicted_classes"]


#: The cases of the real models are exported by the test above (from the models' own prototxts).
FORWARD_CASES = [
    c
    for c in shared_cases("caffe-reference", "forward")
    if c != "cov_fillers_stats" and c not in REFERENCE_CASE.values()
]


@pytest.mark.parametrize("case", FORWARD_CASES or ["<no ../shared>"])
def test_reference_net_exports_to_onnx(tmp_path, case):
    """Every reference net (the coverage nets hold every layer type Caffe has) in its deploy form: data and target
    inputs that only feed losses are dropped, the tested blobs become the outputs; ONNX matches on the real inputs."""
    folder = shared_path("caffe-reference", "forward", case)
    meta = json.loads((folder / "meta.json").read_text())
    param = parse_text((folder / "net.prototxt").read_text(), caffe_pb2.NetParameter(), str(folder / "net.prototxt"))
    weights = [folder / "weights.caffemodel"] if (folder / "weights.caffemodel").exists() else []
    net, reports = build_net_for_weights(deploy_param(param), weights, source=case)
    assert all(r.missing == [] for r in reports)
    if case in NOT_EXPORTABLE:
        with pytest.raises(ExportError, match=NOT_EXPORTABLE[case]):
            export_onnx(net, tmp_path / "net.onnx")
        return
    module = export_onnx(net, tmp_path / "net.onnx")
    with np.load(folder / "input.npz") as npz:
        args = tuple(torch.from_numpy(npz[name]) for name in module.input_names)
    comparison = compare_onnx(module, tmp_path / "net.onnx", args)
    assert comparison.ok(TOL), comparison.errors
    if meta.get("phase") == "TEST":  # the deploy form runs the phase the reference was recorded in
        with np.load(folder / "blobs.npz") as blobs, torch.no_grad():
            outputs = module(*args)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            for name, value in zip(module.output_names, outputs):
                if name in blobs.files:
                    ref = blobs[name]
                    assert np.abs(value.numpy() - ref).max() <= scale_tolerance(ref), name


@pytest.mark.slow
@pytest.mark.parametrize("name", [m.name for m in MODELS])
def test_converted_model_scores_the_caffe_accuracy_on_the_full_test_set(name):
    shared_path("caffe-models", name)
    shared_path("data")
    spec = BY_NAME[name]
    result = accuracies(spec, SHARED)
    # The four models whose README figures the issue names, and the rest where they agree with Caffe's own log.
    assert name in REQUIRED or spec.log_correct is not None or spec.correct == spec.expected
    assert result["pytorch_correct"] == spec.expected, result
    assert result["onnx_correct"] == spec.expected, result
    assert result["same_predictions"], result
