"""Exact Caffe BLAS mode (pipeline/caffe_blas.py): real Caffe 1.0's blobs, gradients and training losses bit for
bit where Caffe's arithmetic is im2col + OpenBLAS gemm (Convolution, InnerProduct) and its softmax."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from reference import run_case as run_forward_case
from test_solver_conformance import read_trace
from test_solver_conformance import run_case as run_training_case

from pipeline import caffe_blas
from pipeline.caffe_blas import exact_blas
from pipeline.cli import build_parser

pytestmark = pytest.mark.skipif(
    not caffe_blas.available(),
    reason="exact Caffe BLAS needs Caffe's OpenBLAS (Debian: apt-get install libopenblas0-pthread; make setup does)",
)


def exact_forward(case: str, backward: bool):
    folder = shared_path("caffe-reference", "forward", case)
    with exact_blas(True):
        _, net = run_forward_case(folder, backward=backward)
    return folder, net


def test_lenet_blobs_and_gradients_equal_caffes_bit_for_bit():
    folder, net = exact_forward("lenet_ethereon_loss", backward=True)
    with np.load(folder / "blobs.npz") as blobs:
        for name in blobs.files:
            np.testing.assert_array_equal(net.blobs[name].data.detach().numpy().reshape(blobs[name].shape), blobs[name])
    with np.load(folder / "grads.npz") as grads:
        params = [key for key in grads.files if not key.startswith("blob:")]
        assert len(params) == 8
        for key in params:
            layer, _, index = key.rpartition("/")
            grad = net.params[layer][int(index)].grad
            np.testing.assert_array_equal(grad.numpy().reshape(grads[key].shape), grads[key], err_msg=key)


def test_cifar10_quick_and_conv_variants_equal_caffes_bit_for_bit():
    folder, net = exact_forward("cifar10_quick_everpeace", backward=False)
    with np.load(folder / "blobs.npz") as blobs:
        for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "ip1", "ip2"):
            np.testing.assert_array_equal(net.blobs[name].data.detach().numpy().reshape(blobs[name].shape), blobs[name])
    # groups, dilation, _h/_w, 1x1, padding, no bias: tops and weight/bias gradients.
    folder, net = exact_forward("cov_conv_variants", backward=True)
    with np.load(folder / "blobs.npz") as blobs:
        for name in (n for n in blobs.files if n.startswith("conv_") and not n.endswith("_target")):
            np.testing.assert_array_equal(net.blobs[name].data.detach().numpy().reshape(blobs[name].shape), blobs[name])
    with np.load(folder / "grads.npz") as grads:
        for key in (k for k in grads.files if not k.startswith("blob:") and k.startswith("conv_")):
            layer, _, index = key.rpartition("/")
            grad = net.params[layer][int(index)].grad
            np.testing.assert_array_equal(grad.numpy().reshape(grads[key].shape), grads[key], err_msg=key)
        # x feeds seven convolutions: its gradient is their sum in SplitLayer::Backward_cpu's order.
        np.testing.assert_array_equal(net.blobs["x"].diff.numpy().reshape(grads["blob:x"].shape), grads["blob:x"])


def test_activations_equal_caffes_bit_for_bit():
    """Sigmoid, TanH, BNLL, ELU, Power (powf), Exp and Log as Caffe's float expressions, PReLU's slope diff as
    Caffe's sequential sum, and EuclideanLoss through sdot: every blob and diff of cov_activations."""
    folder, net = exact_forward("cov_activations", backward=True)
    with np.load(folder / "blobs.npz") as blobs:
        for name in blobs.files:
            ours = net.blobs[name].data.detach().numpy().reshape(blobs[name].shape)
            np.testing.assert_array_equal(ours, blobs[name], err_msg=name)
    with np.load(folder / "grads.npz") as grads:
        for key in grads.files:
            if key.startswith("blob:"):
                ours = net.blobs[key[5:]].diff.numpy()
            else:
                layer, _, index = key.rpartition("/")
                ours = net.params[layer][int(index)].grad.numpy()
            np.testing.assert_array_equal(ours.reshape(grads[key].shape), grads[key], err_msg=key)


def test_adagrad_training_equals_caffes_bit_for_bit_for_100_iterations(tmp_path, monkeypatch):
    """The chaotic case: with oneDNN's sums our loss leaves Caffe's 1e-3 after 5 iterations; with Caffe's
    OpenBLAS calls and libm's powf for AdaGrad's square and square root, every one of the 100 losses is Caffe's."""
    with exact_blas(True):
        folder, _, recorder = run_training_case("lenet_adagrad_fixed", tmp_path, monkeypatch, 100, testing=False)
    by_iter = {int(r["iter"]): r for r in read_trace(folder)}
    assert len(recorder.rows) == 100
    for it, _, loss, _ in recorder.rows:
        assert loss == np.float32(by_iter[it]["net_loss"]), (
            f"iteration {it}: {loss!r} vs Caffe {by_iter[it]['net_loss']}"
        )


def test_adam_follows_caffes_training_for_100_iterations(tmp_path, monkeypatch):
    with exact_blas(True):
        folder, _, recorder = run_training_case("lenet_adam_multistep", tmp_path, monkeypatch, 100, testing=False)
    by_iter = {int(r["iter"]): r for r in read_trace(folder)}
    worst = max(abs(float(loss) / float(by_iter[it]["net_loss"]) - 1) for it, _, loss, _ in recorder.rows)
    assert len(recorder.rows) == 100 and worst < 1e-6, worst


def test_mode_is_off_by_default_scoped_and_only_for_float32_cpu():
    x = torch.zeros(2)
    assert not caffe_blas.active(x)
    with exact_blas(True):
        assert caffe_blas.active(x)
        assert not caffe_blas.active(x.double())
    assert not caffe_blas.active(x)


def test_cli_flag_on_train_test_and_time():
    parser = build_parser()
    for verb, extra in (("train", ["--solver", "s.prototxt"]), ("test", ["--model", "m.prototxt"])):
        assert parser.parse_args([verb, *extra, "--caffe-blas"]).caffe_blas
        assert not parser.parse_args([verb, *extra]).caffe_blas


def test_missing_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(caffe_blas, "_state", {"on": False})
    monkeypatch.setenv("CAFFE_OPENBLAS", str(Path("/nonexistent/libopenblas.so.0")))
    with pytest.raises(caffe_blas.PipelineError, match="cannot load OpenBLAS from /nonexistent"):
        exact_blas(True)
    monkeypatch.setattr(caffe_blas, "library_path", lambda: None)
    with pytest.raises(caffe_blas.PipelineError, match="apt-get install libopenblas0-pthread"):
        exact_blas(True)


def test_sgd_weights_after_100_iterations_stay_within_2e_6_of_caffes_snapshot(tmp_path, monkeypatch):
    """lenet_resume: Caffe's own snapshot after 100 SGD iterations (inv policy, momentum, weight decay) against
    ours from the same initial weights and data. Not bit for bit: the losses equal Caffe's only up to iteration 6,
    then last-bit differences enter (see README, Known limits); measured 1.7e-6 (conv1 weights) and <= 4e-7 for
    the other blobs, relative to each blob's largest weight."""
    caffe_snapshot = shared_path("caffe-reference", "train", "lenet_resume", "lenet_resume_iter_100.caffemodel")
    with exact_blas(True):
        _, solver, _ = run_training_case("lenet_resume", tmp_path, monkeypatch, 100, testing=False)
    ours = {name: [b.detach().contiguous().clone() for b in blobs] for name, blobs in solver.net.params.items()}
    # Read from ../shared itself: the run's own iteration-100 snapshot replaces the mirrored file of that name.
    solver.load_weights(str(caffe_snapshot))
    for name, blobs in solver.net.params.items():
        for i, caffe in enumerate(blobs):
            caffe = caffe.detach().contiguous()
            assert not torch.equal(ours[name][i], torch.zeros_like(caffe))
            relative = float((ours[name][i] - caffe).abs().max() / caffe.abs().max())
            assert relative < 2e-6, f"{name}/{i}: {relative:.2e} from Caffe's snapshot"
