"""Exact Caffe BLAS mode (pipeline/exact/caffe_blas.py): real Caffe 1.0's blobs, gradients and training losses bit for
bit where Caffe's arithmetic is im2col + OpenBLAS gemm (Convolution, InnerProduct) and its softmax.

Bit-equality is the point here, and it does not depend on the machine's own kernels: the mode pins what decides
the rounding (OpenBLAS 0.3.21's Haswell kernels via OPENBLAS_CORETYPE, 2 OpenBLAS threads as Caffe ran, our
portable -O2 C++ ops, libm) and takes no sum from torch's oneDNN/MKL/ATen kernels; `make test-portable` checks
that by running these tests with torch's kernels changed."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path
from reference import run_case as run_forward_case
from solver_util import kept_logger
from test_solver_conformance import CASES, RESUME_STATES, Recorder, make_solver, mirror, read_trace, resume_case
from test_solver_conformance import run_case as run_training_case

from pipeline.cli import build_parser, main
from pipeline.exact import caffe_blas
from pipeline.exact.caffe_blas import exact_blas
from pipeline.ops import caffe_cpu
from pipeline.ops.caffe_math import caffe_axpby
from pipeline.proto.caffe_pb2 import SolverState
from pipeline.weights.io import layer_arrays_from_caffemodel

pytestmark = pytest.mark.skipif(
    not caffe_blas.available(),
    reason="exact Caffe BLAS needs Caffe's OpenBLAS (Debian: apt-get install libopenblas0-pthread; make setup does)",
)


def exact_forward(case: str, backward: bool):
    folder = shared_path("caffe-reference", "forward", case)
    with exact_blas(True):
        meta, net = run_forward_case(folder, backward=backward)
    return folder, meta, net


#: Every reference net of ../shared/caffe-reference/forward (all but cov_fillers_stats, which has no blobs): the
#: mode reproduces every blob and every diff (parameters and blobs, Split branches included). Covered on the way:
#: activations and Swish (libm float expressions, PReLU's sequential slope sum), Eltwise (saxpy sums, PROD's
#: gradient in Caffe's order), LRN (running saxpy window, powf), Scale and Bias (diffs summed by sgemv/sdot),
#: BatchNorm (batch and global statistics, running sums), pooling, concat/slice/split, reshape/flatten/crop,
#: InnerProduct, Convolution (1x1, groups, dilation, 3-D) and Deconvolution, RNN and LSTM (Caffe's unrolled nets,
#: the LSTM unit's own sigmoid and tanh), Im2col, SPP, Embed/BatchReindex/Filter, Reduction, MVN, Tile, Dropout
#: in TEST, Softmax and every loss (SoftmaxWithLoss in each normalization, SigmoidCrossEntropy, Hinge,
#: Contrastive, Infogain, Euclidean), and the real LeNet, CIFAR10 quick and full, ResNet-20 and MobileNet models.
EXACT_NETS = [
    "cov_activations",
    "cov_eltwise",
    "cov_lrn",
    "cov_pooling",
    "cov_scale_bias",
    "cov_batchnorm_train",
    "cov_batchnorm_test",
    "cov_concat_slice_split",
    "cov_reshape_flatten_crop",
    "cov_innerproduct",
    "cov_conv_variants",
    "cov_conv_nd",
    "cov_deconvolution",
    "cov_spp",
    "cov_misc",
    "cov_softmax_losses",
    "cov_infogain_loss",
    "cov_activations_extra",
    "cov_recurrent",
    "cov_index_layers",
    "cov_im2col",
    "cov_dropout_test",
    "lenet_ethereon_loss",
    "cifar10_quick_everpeace",
    "lenet_ethereon",
    "lenet_everpeace_v1",
    "cifar10_full_jwcom79_h5",
    "cov_forward_only",
    "resnet20_junyuseu",
    "mobilenet_cifar_lijianfei",
]


@pytest.mark.parametrize("case", EXACT_NETS)
def test_every_blob_and_diff_equals_caffes_bit_for_bit(case):
    folder = shared_path("caffe-reference", "forward", case)
    folder, meta, net = exact_forward(case, backward=(folder / "grads.npz").exists())
    with np.load(folder / "blobs.npz") as blobs:
        for name in blobs.files:
            ours = net.blobs[name].data.detach().numpy().reshape(blobs[name].shape)
            np.testing.assert_array_equal(ours, blobs[name], err_msg=name)
    stats = folder / "stats_after_forward.npz"
    if stats.exists():  # BatchNorm's running sums after Caffe's forward
        with np.load(stats) as after:
            for key in after.files:
                layer, _, index = key.rpartition("/")
                ours = net.layer(layer).blobs[int(index)].detach().numpy()
                np.testing.assert_array_equal(ours.reshape(after[key].shape), after[key], err_msg=key)
    if not (folder / "grads.npz").exists():
        return
    with np.load(folder / "grads.npz") as grads:
        assert grads.files
        for key in grads.files:
            if key.startswith("blob:"):
                if not meta["force_backward"] and not net._first_values[key[5:]].requires_grad:
                    continue  # no gradient in Caffe either: its diff holds Scale's scratch (test_conformance.py)
                ours = net.blobs[key[5:]].diff.numpy()
            else:
                layer, _, index = key.rpartition("/")
                grad = net.params[layer][int(index)].grad
                # BatchNorm's statistics take no gradient: Caffe's diff stays zero.
                ours = np.zeros(grads[key].shape, np.float32) if grad is None else grad.numpy()
            np.testing.assert_array_equal(ours.reshape(grads[key].shape), grads[key], err_msg=key)


TRAINING_CASES = [case for case in CASES if case != "lenet_resume"]


def assert_trace_equal(rows, trace, case: str) -> None:
    """Every iteration's rate, loss and displayed (smoothed) loss equal to Caffe's float32 bit for bit."""
    by_iter = {int(r["iter"]): r for r in trace}
    for it, lr, loss, smoothed in rows:
        row = by_iter[it]
        assert (lr, loss, smoothed) == (np.float32(row["lr"]), np.float32(row["net_loss"]), np.float32(row["loss"])), (
            f"{case} iteration {it}: lr {lr!r}, loss {loss!r}, smoothed {smoothed!r} vs Caffe {row['lr']}, "
            f"{row['net_loss']}, {row['loss']}"
        )


def assert_tests_equal(solver, trace, case: str) -> None:
    tested = [r for r in trace if any(k.startswith("test_") and v for k, v in r.items())]
    assert tested and set(solver.tested) == {int(r["iter"]) for r in tested}
    for row in tested:
        ours = solver.tested[int(row["iter"])]
        for column in (k for k, v in row.items() if k.startswith("test_") and v):
            assert np.float32(ours[column[5:]]) == np.float32(row[column]), f"{case} iteration {row['iter']}: {column}"


def assert_weights_equal(net, path: Path, case: str) -> None:
    with np.load(path) as ref:
        assert ref.files
        for key in ref.files:
            layer, _, index = key.rpartition("/")
            ours = net.layer(layer).blobs[int(index)].detach().contiguous().numpy()
            np.testing.assert_array_equal(ours.reshape(ref[key].shape), ref[key], err_msg=f"{case}: {key}")


@pytest.mark.parametrize("case", TRAINING_CASES)
def test_training_equals_caffes_bit_for_bit(case, tmp_path, monkeypatch):
    """Each of Caffe's training runs from its initial weights to max_iter (100-200 iterations: SGD with the
    inv, step, sigmoid and multistep policies, lr_mult, iter_size with clipping, Nesterov, AdaGrad, AdaDelta,
    Adam, CIFAR10-quick): every loss, displayed loss, test score and the final weights are Caffe's bits. In the
    default mode the chaotic ones (AdaGrad, Adam, CIFAR10-quick) leave Caffe's loss by 1e-3 after 5-80
    iterations (tests/test_solver_conformance.py)."""
    with exact_blas(True):
        folder, solver, recorder = run_training_case(case, tmp_path, monkeypatch, None)
    trace = read_trace(folder)
    assert len(recorder.rows) == solver.param.max_iter
    assert_trace_equal(recorder.rows, trace, case)
    assert_tests_equal(solver, trace, case)
    last = trace[-1]
    assert last["final_forward_only"] == "1" and solver.smoothed_loss == np.float32(last["loss"])
    assert_weights_equal(solver.net, folder / "final.npz", case)


@pytest.mark.parametrize("state_file", RESUME_STATES)
def test_resuming_from_caffes_solverstate_continues_caffes_run_bit_for_bit(state_file, tmp_path, monkeypatch):
    folder, solver, recorder = resume_case(state_file, tmp_path, monkeypatch)
    with exact_blas(True):
        solver.restore(state_file)
        solver.solve()
    trace = read_trace(folder)
    assert [row[0] for row in recorder.rows] == list(range(100, 200))
    assert_trace_equal(recorder.rows, trace, "lenet_resume")
    assert_tests_equal(solver, trace, "lenet_resume")
    assert_weights_equal(solver.net, folder / "final.npz", "lenet_resume")


def test_snapshot_after_100_iterations_is_caffes_byte_for_byte(tmp_path, monkeypatch):
    """lenet_resume's first run: our iteration-100 .caffemodel and .solverstate are the very files Caffe wrote
    (from ../shared; the run's files replace the mirrored ones): weights, momentum history, and the rest."""
    caffe = shared_path("caffe-reference", "train", "lenet_resume")
    with exact_blas(True):
        folder, _, _ = run_training_case("lenet_resume", tmp_path, monkeypatch, 100, testing=False)
    written = folder / "lenet_resume_iter_100.solverstate"
    assert not written.is_symlink()
    ours, theirs = SolverState(), SolverState()
    ours.ParseFromString(written.read_bytes())
    theirs.ParseFromString((caffe / "lenet_resume_iter_100.solverstate").read_bytes())
    assert ours.iter == theirs.iter == 100 and len(ours.history) == len(theirs.history) == 8
    for i, (a, b) in enumerate(zip(ours.history, theirs.history)):
        assert list(a.shape.dim) == list(b.shape.dim) and a.data == b.data, f"history blob {i}"
    mine = layer_arrays_from_caffemodel(folder / "lenet_resume_iter_100.caffemodel")
    reference = layer_arrays_from_caffemodel(caffe / "lenet_resume_iter_100.caffemodel")
    assert mine.keys() == reference.keys() and len(mine) == 4
    for layer, blobs in reference.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_array_equal(mine[layer][i], blob, err_msg=f"{layer}/{i}")
    for name in ("lenet_resume_iter_100.solverstate", "lenet_resume_iter_100.caffemodel"):
        assert (folder / name).read_bytes() == (caffe / name).read_bytes(), name


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


def test_axpby_is_caffes_scal_then_axpy_in_nchw_order():
    """Caffe without MKL defines cblas_saxpby as sscal(beta, y) then saxpy(alpha, x, y): beta y rounded, then
    alpha x added by saxpy (fused in OpenBLAS's vector body); OpenBLAS's own saxpby rounds both products. On an
    NHWC tensor the calls run on the NCHW order, so each element is rounded as Caffe's blob would be."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 20, 5, 5, generator=generator)
    y = torch.randn(50, 20, 5, 5, generator=generator)
    alpha, beta = 0.0123, 0.9
    expected = y.clone()
    with exact_blas(True):
        assert caffe_blas.axpby(alpha, x, beta, expected)
        nhwc = y.to(memory_format=torch.channels_last)
        assert caffe_blas.axpby(alpha, x.to(memory_format=torch.channels_last), beta, nhwc)
    torch.testing.assert_close(nhwc, expected, rtol=0, atol=0)
    scaled = (y * np.float32(beta)).double()
    fused = (scaled + float(np.float32(alpha)) * x.double()).float()
    unfused = y * np.float32(beta) + x * np.float32(alpha)
    # Fused but for the elements OpenBLAS's kernel leaves to plain C (the end of each thread's share).
    assert int((expected != fused).sum()) <= 2 * 31 < int((expected != unfused).sum())
    # The default mode's own rule (y *= beta; y += alpha x) agrees with it to the element, the kernel's tails
    # aside, where ATen's vectorised add fuses alpha x (its AVX2 and AVX-512 kernels: fmadd); its scalar kernels
    # (ATEN_CPU_CAPABILITY=default, a CPU without AVX2) round the product first.
    default = caffe_axpby(alpha, x, beta, y.clone())
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        torch.testing.assert_close(default, unfused, rtol=0, atol=0)
    else:
        assert int((default != expected).sum()) <= 2 * 31


def caffe_log_messages(path: Path) -> list[str]:
    """The training story of a glog file: losses, rates, test outputs, snapshots, the end; the speed note of
    Caffe's 'Iteration N (x iter/s, ys/n iters), loss' lines left out (it is the clock's, not the numbers')."""
    story = re.compile(
        r"Iteration \d+(, | \(.*\), )(loss|lr) = .*|Iteration \d+, Testing net .*|\s+(Train|Test) net output #.*"
        r"|Snapshotting .*|Optimization Done\."
    )
    messages = []
    for line in path.read_text().splitlines():
        message = line.split("] ", 1)[1] if "] " in line else line
        if story.fullmatch(message):
            messages.append(re.sub(r"^Iteration (\d+) \(.*\), loss", r"Iteration \1, loss", message))
    return messages


def test_train_verb_prints_caffes_log_line_for_line(tmp_path, monkeypatch, capsys):
    """`train --solver solver.prototxt --weights init.caffemodel --caffe-blas` in Caffe's own case folder: every
    loss, lr, test output, snapshot and end line of our glog file is the line in Caffe's caffe.log."""
    folder = mirror("lenet_sgd_inv", tmp_path)
    monkeypatch.chdir(folder)
    previous = torch.get_num_threads()
    with kept_logger():
        assert main(["train", "--solver", "solver.prototxt", "--weights", "init.caffemodel", "--caffe-blas"]) == 0
    assert torch.get_num_threads() == previous
    ours = caffe_log_messages(next(folder.glob("lenet_sgd_inv_train_*.log")))
    caffe = caffe_log_messages(folder / "caffe.log")
    assert len(caffe) > 600 and sum("Train net output" in m for m in caffe) == 200
    assert ours == caffe


@pytest.mark.parametrize(
    "kernel, pad, stride, dilation", [((3, 3), (1, 1), (1, 1), (1, 1)), ((2, 3), (0, 2), (2, 1), (1, 2))]
)
def test_im2col_op_equals_torchs_unfold_and_fold(kernel, pad, stride, dilation):
    """The C++ im2col/col2im (Caffe's loops) and torch's unfold/fold, the fallback, agree bit for bit: the same
    column layout, and overlapping patches added in the same order."""
    if not caffe_cpu.available():
        pytest.skip("the C++ op cannot be built here")
    image = torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(0))
    col = torch.ops.caffe_pipeline.caffe_im2col(image, kernel, pad, stride, dilation)
    torch.testing.assert_close(col, F.unfold(image[None], kernel, dilation, pad, stride)[0], rtol=0, atol=0)
    cols = torch.randn(col.shape, generator=torch.Generator().manual_seed(1))
    back = torch.ops.caffe_pipeline.caffe_col2im(cols, [3, 7, 6], kernel, pad, stride, dilation)
    torch.testing.assert_close(back, F.fold(cols[None], (7, 6), kernel, dilation, pad, stride)[0], rtol=0, atol=0)


def test_convolution_loop_in_cpp_equals_the_python_loop(monkeypatch):
    """The C++ op runs ConvolutionLayer's loop over images and groups; the Python loop (N-d convolutions, or no
    compiler) makes the same BLAS calls: outputs and all three diffs agree bit for bit."""
    from pipeline.net.layers import caffe_gemm

    if not caffe_cpu.available():
        pytest.skip("the C++ op cannot be built here")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 9, 8, generator=generator)
    weight = torch.randn(6, 2, 3, 2, generator=generator)
    bias = torch.randn(6, generator=generator)
    top_diff = torch.randn(3, 6, 5, 8, generator=generator)
    results = []
    for in_cpp in (True, False):
        monkeypatch.setattr(caffe_gemm.caffe_cpu, "available", lambda in_cpp=in_cpp: in_cpp)
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        with exact_blas(True):
            top = caffe_gemm.ConvolutionGemm.apply(*leaves, (2, 1), (1, 1), (1, 2), 2)
            top.backward(top_diff)
        results.append([top.detach(), *(leaf.grad for leaf in leaves)])
    for cpp, python in zip(*results):
        torch.testing.assert_close(cpp, python, rtol=0, atol=0)


def test_caffe_rng_is_boosts_mt19937_and_uniform_real():
    """mt19937's 10000th output from the default seed 5489 is 4123659995 (the C++ standard's check); the uniform
    draws stay inside [low, high] with Caffe's float arithmetic."""
    from pipeline.exact.caffe_rng import CaffeRNG

    rng = CaffeRNG(5489)
    assert int(rng._engine.random_raw(10000)[-1]) == 4123659995
    values = CaffeRNG(1).uniform(100_000, -0.5, 0.25)
    assert values.dtype == np.float32 and values.min() >= -0.5 and values.max() <= 0.25


@pytest.mark.parametrize("seed", [1701, 2024])
def test_every_filler_draws_caffes_numbers(seed):
    """cov_fillers_stats: Caffe filled one blob per filler type in one net (uniform, gaussian, sparse gaussian,
    xavier and msra in each variance norm, bilinear, positive_unitball, constant), so each draws where the last
    stopped; ours, built from the same seed, have the minimum, maximum and (double) mean of every blob."""
    import json

    from pipeline.net import Net
    from pipeline.text.prototxt import read_net

    folder = shared_path("caffe-reference", "forward", "cov_fillers_stats")
    stats = json.loads((folder / "stats.json").read_text())
    with exact_blas(True):
        net = Net(read_net(folder / "net.prototxt"), seed=seed)
    assert len(stats) == 11
    for name, by_seed in stats.items():
        caffe = by_seed[f"seed_{seed}"]
        ours = net.layer(name).blobs[0].detach().numpy().astype(np.float64)
        assert (float(ours.min()), float(ours.max()), float(ours.mean())) == (caffe["min"], caffe["max"], caffe["mean"])


@pytest.mark.parametrize("case", ["lenet_sgd_inv", "cifar10_quick_sgd"])
def test_random_seed_gives_caffes_initial_weights_and_run(case, tmp_path, monkeypatch):
    """No init.caffemodel: the net built from solver.prototxt's random_seed 1701 in the bit-exact mode holds the
    very weights Caffe's solver started from (LeNet's xavier, CIFAR10-quick's gaussian fillers, from Boost's
    mt19937), and trains on Caffe's losses."""
    folder = mirror(case, tmp_path)
    monkeypatch.chdir(folder)
    with exact_blas(True):
        solver = make_solver(folder)
        solver.param.test_interval = 0
        assert_weights_equal(solver.net, folder / "init.npz", f"{case}: random_seed 1701")
        recorder = Recorder(solver)
        solver.step(10)
    assert_trace_equal(recorder.rows, read_trace(folder), f"{case} from its random_seed")
