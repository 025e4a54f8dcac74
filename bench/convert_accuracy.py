"""Full-test-set accuracy of the real third-party Caffe models after conversion, against what real Caffe scored.

    .venv/bin/python bench/convert_accuracy.py [--models lenet_v2,...] [--limit N]

Each model of ../shared/caffe-models is converted as a user would (`convert`: prototxt + caffemodel / .h5 to a
safetensors file and to ONNX); the PyTorch net is then rebuilt from the safetensors file alone and the ONNX file
runs in onnxruntime, both over the whole test set with the model's own preprocessing (README of
../shared/caffe-models). Both must score exactly the README's figure. tests/test_real_models.py runs the same.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@dataclass(frozen=True)
class RealModel:
    name: str
    model: str  # under caffe-models/
    weights: str
    dataset: str  # "mnist" or "cifar10"
    correct: int  # images real Caffe classifies correctly (README)
    images: int = 10_000
    mean_file: str = ""  # subtracted from the uint8 planes (CIFAR-10 train mean)
    scale: float = 1.0
    crop: int = 0  # centre crop (TEST phase)
    input_shapes: tuple = ()  # for a train/test prototxt: (blob, shape) of the deploy input
    log_correct: int | None = None  # where the author's own Caffe training log disagrees with the README

    @property
    def expected(self) -> int:
        return self.log_correct if self.log_correct is not None else self.correct


MODELS = [
    RealModel(
        "lenet_v2", "lenet_v2/lenet.prototxt", "lenet_v2/lenet_iter_10000.caffemodel", "mnist", 9914, scale=0.00390625
    ),
    RealModel(
        "lenet_v1", "lenet_v1/lenet.prototxt", "lenet_v1/lenet_iter_10000.caffemodel", "mnist", 9905, scale=0.00390625
    ),
    RealModel(
        "cifar10_quick_v1",
        "cifar10_quick_v1/cifar10_quick.prototxt",
        "cifar10_quick_v1/cifar10_quick_iter_5000.caffemodel",
        "cifar10",
        7491,
        mean_file="cifar10_quick_v1/mean.binaryproto",
    ),
    RealModel(
        "cifar10_full_h5",
        "cifar10_full_h5/cifar10_full.prototxt",
        "cifar10_full_h5/cifar10_full_iter_70000.caffemodel.h5",
        "cifar10",
        8151,
        mean_file="cifar10_full_h5/mean.binaryproto",
    ),
    RealModel(
        "mobilenet_cifar",
        "mobilenet_cifar/deploy.prototxt",
        "mobilenet_cifar/caffe_ljftest_train_iter_100000.caffemodel",
        "cifar10",
        8770,
        crop=28,
        # caffe.log, iteration 100000 (this snapshot), test_iter 100 x batch 100: "Accuracy1 = 0.8875".
        # The README's 87.70% matches no preprocessing tried (crop offsets 0/2/4, BGR, mean, scale).
        log_correct=8875,
    ),
    RealModel(
        "resnet20_cifar",
        "resnet20_cifar/res20_cifar_train_test.prototxt",
        "resnet20_cifar/ResNet_20.caffemodel",
        "cifar10",
        1830,
        images=2000,
        mean_file="cifar10_quick_v1/mean.binaryproto",
        input_shapes=(("Data1", (1, 3, 32, 32)),),
    ),
]
#: The models whose figures the conversion must reproduce in the default slow test (the rest: this script).
REQUIRED = ("lenet_v2", "lenet_v1", "cifar10_quick_v1", "cifar10_full_h5")


def test_set(spec: RealModel, shared: Path = SHARED) -> tuple[np.ndarray, np.ndarray]:
    """The preprocessed float32 test images (N, C, H, W) and their labels, as the model's data layer makes them."""
    from pipeline.data.datasets import load_mnist, read_cifar_batch
    from pipeline.weights.io import read_mean

    if spec.dataset == "mnist":
        images, labels = load_mnist(shared / "data" / "mnist", "test")
        images = images[:, None]
    else:
        images, labels = read_cifar_batch(shared / "data" / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin")
    images, labels = images[: spec.images], labels[: spec.images].astype(np.int64)
    data = images.astype(np.float32)
    if spec.mean_file:
        data = data - read_mean(shared / "caffe-models" / spec.mean_file).reshape(1, *data.shape[1:])
    if spec.scale != 1:
        data = data * np.float32(spec.scale)
    if spec.crop:
        top, left = (data.shape[2] - spec.crop) // 2, (data.shape[3] - spec.crop) // 2
        data = data[:, :, top : top + spec.crop, left : left + spec.crop]
    return np.ascontiguousarray(data, dtype=np.float32), labels


def convert_model(spec: RealModel, out_dir: Path, to: str, shared: Path = SHARED):
    from pipeline.export.convert import FORMATS, ConvertRequest, convert

    folder = shared / "caffe-models"
    request = ConvertRequest(
        model=folder / spec.model,
        weights=[folder / spec.weights],
        to=to,
        out=out_dir / (spec.name + FORMATS[to]),
        input_shapes=dict(spec.input_shapes),
    )
    return convert(request)


def _scores(predict, data: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([predict(data[i : i + batch]) for i in range(0, len(data), batch)])


def accuracies(spec: RealModel, shared: Path = SHARED, work: Path | None = None) -> dict[str, object]:
    """Convert `spec` to safetensors and ONNX, then score both on its test set. Returns correct counts and more."""
    import torch

    from pipeline.export.module import DeployModule
    from pipeline.export.onnx_io import run_onnx
    from pipeline.export.safetensors_io import net_from_safetensors

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        start = time.perf_counter()
        pt = convert_model(spec, Path(tmp), "safetensors", shared).out
        onnx_result = convert_model(spec, Path(tmp), "onnx", shared)
        convert_seconds = time.perf_counter() - start
        data, labels = test_set(spec, shared)
        net = net_from_safetensors(pt)
        module = DeployModule(net).eval()
        (output,) = module.output_names
        with torch.no_grad():
            ours = _scores(lambda x: module(torch.from_numpy(x)).numpy(), data)
        theirs = _scores(lambda x: run_onnx(onnx_result.out, {module.input_names[0]: x})[output], data)
    return {
        "pytorch_correct": int((ours.argmax(1).reshape(len(labels)) == labels).sum()),
        "onnx_correct": int((theirs.argmax(1).reshape(len(labels)) == labels).sum()),
        "same_predictions": bool((ours.argmax(1) == theirs.argmax(1)).all()),
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "convert_seconds": convert_seconds,
        "images": len(labels),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m.name for m in MODELS), help="comma-separated model names")
    parser.add_argument("--shared", default=str(SHARED), help="the shared folder (caffe-models/, data/)")
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    if not (shared / "caffe-models").is_dir() or not (shared / "data").is_dir():
        print(f"{shared}/caffe-models or {shared}/data is missing: nothing to measure")
        return 0
    wanted = [m for m in MODELS if m.name in args.models.split(",")]
    print(
        f"{'model':<18}{'images':>7}{'README':>9}{'Caffe log':>11}{'PyTorch':>10}{'ONNX':>10}{'equal':>7}"
        f"{'max |diff|':>12}{'convert s':>11}"
    )
    failures = 0
    for spec in wanted:
        r = accuracies(spec, shared)
        same = r["pytorch_correct"] == r["onnx_correct"] == spec.expected
        failures += not same
        n = r["images"]
        log = f"{100 * spec.log_correct / n:.2f}%" if spec.log_correct is not None else "-"
        print(
            f"{spec.name:<18}{n:>7}{100 * spec.correct / n:>8.2f}%{log:>11}"
            f"{100 * r['pytorch_correct'] / n:>9.2f}%{100 * r['onnx_correct'] / n:>9.2f}%"
            f"{'yes' if same else 'NO':>7}{r['max_abs_diff']:>12.2g}{r['convert_seconds']:>11.1f}",
            flush=True,
        )
    print(
        "equal: PyTorch and ONNX both score exactly the Caffe figure (the author's log where it disagrees with "
        "the README)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
