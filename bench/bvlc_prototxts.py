"""Build every net prototxt of BVLC Caffe 1.0's examples/ and models/ here, data sources stubbed.

    .venv/bin/python bench/bvlc_prototxts.py [CAFFE] [--ref 1.0]

CAFFE is a BVLC Caffe checkout: a plain folder, or a git repository (bare or not; read with `git show`, at the
tag `1.0` when it has one, else HEAD). Without it, $BVLC_CAFFE_DIR. Solver prototxts are skipped.

Each net is built (pipeline.net.net.Net: shapes, parameters, fillers; no forward) in each state Caffe would build it
in: TRAIN and TEST, and for a phase whose include rules name stages (mnist_autoencoder's test-on-train and
test-on-test, which its solvers select), once per stage. Data layers whose sources are not here (Data,
ImageData, HDF5Data, WindowData, MemoryData) become DummyData layers with the same name, tops and rules and the
shapes Caffe would give their tops: batch_size from their params, channels x height x width from the dataset
their source names (MNIST 1x28x28, the siamese pairs 2x28x28, CIFAR-10 3x32x32, ILSVRC12 3x256x256, the HDF5
classification example's 4 features), new_height/new_width for ImageData, crop_size when set. The Python layers'
modules are found as Caffe's examples find them, with examples/pycaffe/layers on the path (PYTHONPATH).

Prints one row per (file, state), OK or the error, and exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.proto import caffe_pb2

ENV = "BVLC_CAFFE_DIR"
FOLDERS = ("examples", "models")
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData"}
# The image each dataset's DB holds (channels, height, width), by a word of its source path, first match wins.
SOURCE_SHAPES = (
    ("mnist_siamese", (2, 28, 28)),
    ("mnist", (1, 28, 28)),
    ("cifar10", (3, 32, 32)),
    ("ilsvrc12", (3, 256, 256)),
    ("imagenet", (3, 256, 256)),
)
UNKNOWN_IMAGE = (3, 256, 256)
# HDF5 sources: each top's per-sample shape (examples/hdf5_classification writes 4 features and a scalar label).
HDF5_SHAPES = {"hdf5_classification": {"data": (4,), "label": ()}}
PHASES = ("TRAIN", "TEST")


class Checkout:
    """The files of a BVLC Caffe checkout: a plain folder, or a git repository read at `ref`."""

    def __init__(self, path: str | Path, ref: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such folder")
        self.git = not (self.path / "examples").is_dir() and self._is_git()
        self.ref = None
        if self.git:
            self.ref = ref or ("1.0" if self._git("tag", "--list", "1.0").strip() else "HEAD")
        elif not (self.path / "examples").is_dir():
            raise FileNotFoundError(f"{self.path}: neither a Caffe folder (no examples/) nor a git repository")

    def _is_git(self) -> bool:
        try:
            self._git("rev-parse", "--git-dir")
            return True
        except (subprocess.CalledProcessError, FileNotFoundError):
            return False

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], check=True, capture_output=True, text=True).stdout

    def files(self, under: str) -> list[str]:
        if self.git:
            return sorted(self._git("ls-tree", "-r", "--name-only", self.ref, "--", under).split())
        root = self.path / under
        return sorted(str(p.relative_to(self.path)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []

    def read(self, name: str) -> str:
        if self.git:
            return self._git("show", f"{self.ref}:{name}")
        return (self.path / name).read_text()

    def folder(self, under: str, into: Path) -> Path:
        """A real folder holding `under` (the checkout's own, or a copy of the git tree's files)."""
        if not self.git:
            return self.path / under
        for name in self.files(under):
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.read(name))
        return into / under

    def __str__(self) -> str:
        return f"{self.path} at {self.ref}" if self.git else str(self.path)


def net_prototxts(checkout: Checkout) -> list[str]:
    """Every .prototxt under examples/ and models/ that is not a solver."""
    names = [n for folder in FOLDERS for n in checkout.files(folder) if n.endswith(".prototxt")]
    return [n for n in names if "solver" not in Path(n).name]


def _image_shape(layer: caffe_pb2.LayerParameter) -> tuple[int, int, int]:
    if layer.type == "ImageData":
        p = layer.image_data_param
        channels = 3 if p.is_color else 1
        height, width = (p.new_height, p.new_width) if p.new_height and p.new_width else UNKNOWN_IMAGE[1:]
        shape = (channels, height, width)
    elif layer.type == "MemoryData":
        p = layer.memory_data_param
        shape = (p.channels, p.height, p.width)
    elif layer.type == "WindowData":
        shape = UNKNOWN_IMAGE  # crops of the images' windows, warped to crop_size below
    else:
        source = layer.data_param.source
        shape = next((s for word, s in SOURCE_SHAPES if word in source), UNKNOWN_IMAGE)
    crop = layer.transform_param.crop_size
    return (shape[0], crop, crop) if crop else shape


def _batch_size(layer: caffe_pb2.LayerParameter) -> int:
    for field in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param", "memory_data_param"):
        if layer.HasField(field):
            return getattr(layer, field).batch_size
    return 1


def top_shapes(layer: caffe_pb2.LayerParameter) -> list[tuple[int, ...]]:
    """The shapes Caffe's data layer would give its tops (the image/features first, then the label)."""
    batch = _batch_size(layer)
    if layer.type == "HDF5Data":
        source = layer.hdf5_data_param.source
        known = next((shapes for word, shapes in HDF5_SHAPES.items() if word in source), {})
        return [(batch, *known.get(top, (1,))) for top in layer.top]
    return [(batch, *_image_shape(layer))] + [(batch,)] * (len(layer.top) - 1)


def stub_data_layers(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of `net` whose data layers are DummyData layers of the same name, tops, rules and top shapes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        if layer.type not in DATA_TYPES:
            continue
        stub = caffe_pb2.LayerParameter(name=layer.name, type="DummyData", top=layer.top)
        stub.include.extend(layer.include)
        stub.exclude.extend(layer.exclude)
        if layer.HasField("phase"):
            stub.phase = layer.phase
        for shape in top_shapes(layer):
            stub.dummy_data_param.shape.add(dim=shape)
        layer.CopyFrom(stub)
    return out


def states(net: caffe_pb2.NetParameter) -> list[tuple[str, tuple[str, ...]]]:
    """(phase, stages) pairs to build: each phase, once per stage its include rules name (else with none)."""
    out = []
    for phase in PHASES:
        number = caffe_pb2.Phase.Value(phase)
        stages = []
        for layer in net.layer:
            for rule in layer.include:
                if rule.HasField("phase") and rule.phase != number:
                    continue
                stages += [s for s in rule.stage if s not in stages]
        out += [(phase, (stage,)) for stage in stages] or [(phase, ())]
    return out


@dataclass
class Row:
    file: str
    state: str
    error: str | None
    seconds: float


def build_all(checkout: Checkout, files: list[str] | None = None) -> list[Row]:
    from pipeline.net import Net
    from pipeline.text.prototxt import parse_text
    from pipeline.text.upgrade import upgrade_net

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        layers = checkout.folder("examples/pycaffe/layers", Path(tmp))
        if str(layers) not in sys.path:
            sys.path.append(str(layers))  # Caffe's examples: PYTHONPATH=examples/pycaffe/layers
        for name in files if files is not None else net_prototxts(checkout):
            try:
                net = upgrade_net(parse_text(checkout.read(name), caffe_pb2.NetParameter(), name), name)
                net = stub_data_layers(net)
                todo = states(net)
            except Exception as exc:  # noqa: BLE001 - reported per file
                rows.append(Row(name, "parse", f"{type(exc).__name__}: {exc}", 0.0))
                continue
            for phase, stages in todo:
                label = phase + (f" stage {stages[0]}" if stages else "")
                start = time.perf_counter()
                try:
                    Net(net, phase, stages=stages, source=name)
                    error = None
                except Exception as exc:  # noqa: BLE001 - reported per state
                    error = f"{type(exc).__name__}: {exc}"
                rows.append(Row(name, label, error, time.perf_counter() - start))
    return rows


def find_checkout(path: str | None) -> str | None:
    return path or os.environ.get(ENV) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caffe", nargs="?", help=f"BVLC Caffe checkout (folder or git repository); else ${ENV}")
    parser.add_argument("--ref", help="git ref to read (default: tag 1.0 when present, else HEAD)")
    parser.add_argument("--width", type=int, default=160, help="error messages are cut to this many characters")
    args = parser.parse_args(argv)
    path = find_checkout(args.caffe)
    if path is None:
        parser.error(f"give a BVLC Caffe checkout or set ${ENV}")
    checkout = Checkout(path, args.ref)
    start = time.perf_counter()
    rows = build_all(checkout)
    wide = max(len(r.file) for r in rows)
    print(f"BVLC Caffe prototxts from {checkout}")
    print(f"{'file':<{wide}}  {'state':<24} result")
    for r in rows:
        result = "OK" if r.error is None else r.error.replace("\n", " ")[: args.width]
        print(f"{r.file:<{wide}}  {r.state:<24} {result}")
    files = sorted({r.file for r in rows})
    failed = sorted({r.file for r in rows if r.error is not None})
    print(
        f"{len(files) - len(failed)} of {len(files)} files build in every state ({len(rows)} builds, "
        f"{sum(r.error is not None for r in rows)} failed) in {time.perf_counter() - start:.0f} s"
    )
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
