"""One conversion: a prototxt and its weights in, an ONNX / safetensors / torch / torch.export / caffemodel file out.

    convert(ConvertRequest(model="deploy.prototxt", weights=["x.caffemodel"], to="onnx"))

writes to the current folder unless told where (the first weights file's name with the format's suffix:
x.onnx), atomically, never over one of its inputs, and returns what it did, including the summary table
`format_summary` prints: every layer with its type, top shapes and parameter count, the totals, the output
shapes and the preprocessing the model expects.

Formats: `onnx`; `safetensors` and `pt` (a torch.save state dict), both keyed "<layer>.<blob name>" as
`DeployModule(net).state_dict()` is (`conv1.weight`, `conv1.bias`), the safetensors file also carrying the deploy
prototxt; `pt2` (a torch.export program); `caffemodel`; `h5` (Caffe's HDF5 layout).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from pipeline.errors import PipelineError
from pipeline.export.deploy import Preprocessing, build_net_for_weights, deploy_param, preprocessing
from pipeline.export.module import ExportError, export_program
from pipeline.export.onnx_io import DEFAULT_OPSET, check_onnx, compare_onnx, export_onnx
from pipeline.export.safetensors_io import save_safetensors, save_torch
from pipeline.fileio import temporary_beside
from pipeline.text.prototxt import read_net
from pipeline.weights.io import save_caffemodel, save_caffemodel_h5

log = logging.getLogger("pipeline")

#: --to value -> file suffix of the output.
FORMATS = {
    "onnx": ".onnx",
    "safetensors": ".safetensors",
    "pt": ".pt",
    "pt2": ".pt2",
    "caffemodel": ".caffemodel",
    "h5": ".caffemodel.h5",
}
_WEIGHT_SUFFIXES = (
    ".caffemodel.h5",
    ".caffemodel",
    ".safetensors",
    ".h5",
    ".hdf5",
    ".npz",
    ".onnx",
    ".pt2",
    ".pth",
    ".pt",
)


def default_output(weights: str | Path, to: str, folder: str | Path | None = None) -> Path:
    """In `folder` (default: the current one), the weights' name with the format's suffix instead of theirs
    (".converted" added where that is the weights file itself)."""
    weights = Path(weights)
    stem = weights.name
    for suffix in _WEIGHT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    folder = Path(folder) if folder is not None else Path()
    out = folder / (stem + FORMATS[to])
    return folder / (stem + ".converted" + FORMATS[to]) if _same_file(out, weights) else out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(out: Path, inputs: list[str | Path]) -> None:
    """Refuse to write over one of the conversion's inputs, whatever the output path says."""
    for path in inputs:
        path = Path(path)
        if _same_file(out, path) or out.resolve() == path.resolve():
            raise ExportError(f"refusing to write {out}: it is the input file {path} (give another --out)")


@dataclass
class ConvertRequest:
    model: str | Path
    weights: list[str | Path]
    to: str
    out: str | Path | None = None
    data_prototxt: str | Path | None = None  # train/test prototxt to read the preprocessing from
    variables: dict = field(default_factory=dict)  # template variables for the prototxts
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    opset: int = DEFAULT_OPSET
    verify: bool = True
    outputs: list[str] = field(default_factory=list)  # ONNX / pt2: the blobs to output (default: the net's outputs)


@dataclass
class ConvertResult:
    out: Path
    net: object
    preprocessing: Preprocessing
    ignored: list[str]
    missing: list[str]
    onnx_error: float | None = None  # worst onnxruntime-vs-PyTorch difference, relative to the output scale


def convert(request: ConvertRequest) -> ConvertResult:
    if request.to not in FORMATS:
        raise ExportError(f"unknown output format '{request.to}' (one of {', '.join(FORMATS)})")
    if not request.weights:
        raise ExportError("no weights file given")
    inputs = [*request.weights, request.model, *([request.data_prototxt] if request.data_prototxt else [])]
    out = Path(request.out) if request.out else default_output(request.weights[0], request.to)
    if not request.out and any(_same_file(out, Path(p)) for p in inputs):
        out = out.with_name(out.name[: -len(FORMATS[request.to])] + ".converted" + FORMATS[request.to])
    check_output(out, inputs)
    param = read_net(request.model, request.variables)
    deploy = deploy_param(param, request.input_shapes)
    net, reports = build_net_for_weights(deploy, [Path(w) for w in request.weights], source=str(request.model))
    for path, report in zip(request.weights, reports):
        if not report.copied:
            raise ExportError(f"{path}: no layer of this file matches a layer of {request.model}")
    missing = reports[-1].missing
    for name in missing:
        log.warning("layer %s has no weights in %s: filled by its fillers", name, ", ".join(map(str, request.weights)))
    # The data prototxt may be the model's own template (the zoo's): rendered in its train/test form.
    data_variables = {**request.variables, "deploy": False}
    data_param = read_net(request.data_prototxt, data_variables) if request.data_prototxt else None
    if data_param is None and any(not layer.bottom and layer.type != "Input" for layer in param.layer):
        data_param = param  # the model is a train/test prototxt: its data layers tell
    channels = next((shape[1] for shape in _input_shapes(net) if len(shape) > 1), None)
    result = ConvertResult(
        out=out,
        net=net,
        preprocessing=preprocessing(data_param, channels),
        ignored=sorted({n for r in reports for n in r.ignored}),
        missing=missing,
    )
    result.out.parent.mkdir(parents=True, exist_ok=True)
    _write(request, deploy, result)
    return result


def _input_shapes(net):
    return [net.blob_shapes[t] for layer in net.layers if layer.is_source for t in layer.top_names]


def _write(request: ConvertRequest, deploy, result: ConvertResult) -> None:
    net, out = result.net, result.out
    if request.to == "onnx":
        module = export_onnx(
            net, out, request.opset, outputs=request.outputs or None
        )  # checks the graph with onnx.checker before writing
        if request.verify and importlib.util.find_spec("onnxruntime") is None:
            log.warning("onnxruntime is not installed: %s not run for comparison (pip install onnxruntime)", out)
        elif request.verify:
            check_onnx(out)  # the written file as a whole (loads it: the weights' size in memory once more)
            comparison = compare_onnx(module, out)
            result.onnx_error = comparison.worst
            if not comparison.ok():
                raise ExportError(
                    f"{out}: onnxruntime differs from PyTorch by {comparison.worst:.3g} of the output "
                    f"scale (> 1e-4): {comparison.errors}"
                )
    elif request.to == "safetensors":
        save_safetensors(net, out, {"prototxt": text_format.MessageToString(deploy)})
    elif request.to == "pt":
        save_torch(net, out)
    elif request.to == "pt2":
        import torch

        program = export_program(net, outputs=request.outputs or None)
        with temporary_beside(out) as tmp:
            # torch.export.save wants a name ending in .pt2: save under one, then move it onto the temporary.
            named = Path(tmp).with_name(Path(tmp).name + ".pt2")
            try:
                torch.export.save(program, named)
                os.replace(named, tmp)
            finally:
                named.unlink(missing_ok=True)
    elif request.to == "caffemodel":
        save_caffemodel(net, out)
    else:
        save_caffemodel_h5(net, out)


def format_summary(result: ConvertResult) -> str:
    """The table the `convert` verb prints."""
    net = result.net
    rows = [("layer", "type", "top shapes", "params")]
    total = 0
    for layer in net.layers:
        if layer.type_name == "Split":
            continue
        count = sum(b.numel() for b in layer.blobs)
        total += count
        tops = " ".join(f"{t}{list(net.blob_shapes[t])}" for t in layer.top_names) or "-"
        rows.append((layer.name, layer.type_name, tops, f"{count:,}" if count else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"net '{net.name}' ({len(rows) - 1} layers)"]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(cell.rjust(w) if k == 3 else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths)))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"total parameters: {total:,} ({total * 4 / 2**20:.1f} MiB as float32)")
    inputs = [f"{t} {list(net.blob_shapes[t])}" for layer in net.layers if layer.is_source for t in layer.top_names]
    lines.append("inputs: " + ", ".join(inputs))
    lines.append("outputs: " + ", ".join(f"{o} {list(net.blob_shapes[o])}" for o in net.output_names))
    lines.append("preprocessing:")
    lines.extend(f"  - {line}" for line in result.preprocessing.describe())
    if result.ignored:
        lines.append(f"layers in the weights but not in the net (skipped): {', '.join(result.ignored)}")
    if result.missing:
        lines.append(f"layers with no weights in the file (filled by their fillers): {', '.join(result.missing)}")
    if result.onnx_error is not None:
        lines.append(f"onnxruntime vs PyTorch: max difference {result.onnx_error:.2g} of the output scale")
    lines.append(f"wrote {result.out}")
    return "\n".join(lines)


__all__ = [
    "FORMATS",
    "ConvertRequest",
    "ConvertResult",
    "PipelineError",
    "check_output",
    "convert",
    "default_output",
    "format_summary",
]
