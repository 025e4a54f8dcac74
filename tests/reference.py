"""Running a ../shared/caffe-reference/forward case through our net, for the conformance tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import parse_text
from pipeline.weights.io import copy_layer_blobs, read_npz_weights


def load_case(folder: Path, dtype=torch.float32):
    meta = json.loads((folder / "meta.json").read_text())
    param = parse_text((folder / "net.prototxt").read_text(), caffe_pb2.NetParameter(), str(folder / "net.prototxt"))
    net = Net(param, phase=meta.get("phase", "TRAIN"), seed=0).to(dtype)
    if (folder / "weights.npz").exists():
        copy_layer_blobs(net, read_npz_weights(folder / "weights.npz"), str(folder / "weights.npz"))
    inputs = {}
    if (folder / "input.npz").exists():
        with np.load(folder / "input.npz") as npz:
            inputs = {k: torch.from_numpy(npz[k]).to(dtype) for k in npz.files}
    return meta, net, inputs


def run_case(folder: Path, dtype=torch.float32, backward: bool = True):
    meta, net, inputs = load_case(folder, dtype)
    net.retain_diffs = True
    net(**inputs)
    if backward and (folder / "grads.npz").exists() and net.loss is not None:
        net.backward()
    return meta, net


def scale_tolerance(reference: np.ndarray, rel: float = 1e-4) -> float:
    """1e-4 of the blob's scale (its largest magnitude), with a floor for blobs that are all tiny."""
    return rel * max(float(np.abs(reference).max()) if reference.size else 0.0, 1e-2)
