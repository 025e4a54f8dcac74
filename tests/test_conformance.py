"""Every blob and gradient of every ../shared/caffe-reference/forward case against real Caffe 1.0."""

import numpy as np
import pytest
import torch
from conftest import SHARED, shared_cases, shared_path
from reference import run_case, scale_tolerance

CASES = [c for c in shared_cases("caffe-reference", "forward") if c != "cov_fillers_stats"]


def _compare(kind, name, ours, ref):
    ours = ours.detach().cpu().numpy().reshape(ref.shape) if ours.numel() == ref.size else ours.detach().cpu().numpy()
    assert ours.shape == ref.shape, f"{kind} {name}: shape {ours.shape} vs Caffe {ref.shape}"
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    assert err <= scale_tolerance(ref), f"{kind} {name}: max |diff| {err:.3g} > {scale_tolerance(ref):.3g}"


@pytest.mark.parametrize("case", CASES or ["<no ../shared>"])
def test_forward_blobs_match_caffe(case):
    folder = shared_path("caffe-reference", "forward", case)
    meta, net = run_case(folder, backward=False)
    with np.load(folder / "blobs.npz") as blobs:
        for name in blobs.files:
            _compare("blob", name, net.blobs[name].data, blobs[name])


@pytest.mark.parametrize(
    "case", [c for c in CASES if (SHARED / "caffe-reference/forward" / c / "grads.npz").exists()] or ["<no ../shared>"]
)
def test_gradients_match_caffe(case):
    folder = shared_path("caffe-reference", "forward", case)
    meta, net = run_case(folder, backward=True)
    with np.load(folder / "grads.npz") as grads:
        for key in grads.files:
            if key.startswith("blob:"):
                name = key[5:]
                if not meta["force_backward"] and not net._first_values[name].requires_grad:
                    # Caffe's need-backward analysis gives this blob no gradient either; what Caffe left in
                    # its diff is scratch (Scale's backward parks top_diff * bottom there), not a gradient.
                    continue
                _compare("diff", key, net.blobs[name].diff, grads[key])
            else:
                layer, _, index = key.rpartition("/")
                param = net.params[layer][int(index)]
                if not isinstance(param, torch.nn.Parameter):
                    # Statistics blobs (BatchNorm) are buffers: Caffe never writes their diffs, they stay 0.
                    _compare("param diff", key, torch.zeros_like(param), grads[key])
                    continue
                assert param.grad is not None, f"param {key}: no gradient computed"
                _compare("param diff", key, param.grad, grads[key])
