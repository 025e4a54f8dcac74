"""ONNX export of a deploy net (opset 17 by default, dynamic batch), its check, and its run in onnxruntime.

The exporter is torch's TorchScript-based one (`dynamo=False`): with torch 2.13 the dynamo exporter needs the
`onnxscript` package, which this project does not install, and the TorchScript path exports every layer type
of the zoo and the reference nets (see DeployModule's export forwards for the types that needed one).
The graph's inputs and outputs are named after the net's blobs, its initializers after the blobs' keys
"<layer>/<i>"; every input whose first axis is the batch gets the symbolic axis "batch", and so do the outputs
that carry it. The weights are never copied: the graph is traced without them and they are written from the
net's tensors (a VGG-16 export peaks at the net plus a few MB, where torch's exporter holds about 3 copies).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.export.module import DeployModule, ExportError, batch_inputs
from pipeline.extras import install_hint, require
from pipeline.fileio import atomic_writer, temporary_beside
from pipeline.weights.wire import len_header

DEFAULT_OPSET = 17


def export_onnx(
    net,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    external_data: bool | None = None,
    outputs: list[str] | None = None,
) -> DeployModule:
    """Write `net` (TEST phase) to `path` as ONNX, atomically; returns the DeployModule that was exported.

    The graph is traced with the weights as graph inputs (no copy of them is made), checked with
    onnx.checker, then written with the weights spliced in as initializers named "<layer>/<i>", straight from
    the net's tensors. `outputs` picks the output blobs (default: the net's). `external_data` (default: only
    past 1.8 GB, protobuf's limit being 2 GB) puts them in `<path>.data` beside the model instead, as ONNX's
    external-data convention has it.
    """
    if opset < 17:
        raise ExportError(f"opset {opset} asked for: the export targets opset 17 or later")
    module = DeployModule(net, outputs).eval()
    model = _trace(module, net.name, opset, dynamic_batch)
    weights = _weights_by_input(module, model)
    check_graph(model, f"net '{net.name}'")
    _inputs_to_initializers(model, weights)
    total = sum(t.numel() * 4 for t in weights.values())
    external = total > _INLINE_LIMIT if external_data is None else external_data
    if external:
        data_path = Path(str(path) + ".data")
        with temporary_beside(data_path) as data_tmp, atomic_writer(path) as f:
            with open(data_tmp, "wb") as data:
                _write_model(f, model, weights, data, data_path.name)
    else:
        with atomic_writer(path) as f:
            _write_model(f, model, weights)
    return module


_INLINE_LIMIT = 1_800_000_000


def _trace(module: DeployModule, name: str, opset: int, dynamic_batch: bool):
    onnx = require("onnx", "onnx", "ONNX export and checking")

    args = module.example_inputs()
    dynamic, batch = {}, None
    if dynamic_batch:
        flags = batch_inputs(args)
        dynamic = {n: {0: "batch"} for n, flag in zip(module.input_names, flags) if flag}
        batch = module.input_shapes[module.input_names[0]][0] if flags and flags[0] else None
        # No dynamic_axes for the outputs: their shapes are declared after the export.
    buffer = io.BytesIO()
    with _shape_inference_without_weights(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    args,
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    export_params=False,
                    input_names=module.input_names,
                    output_names=module.output_names,
                    dynamic_axes=dynamic or None,
                    do_constant_folding=False,
                )
        except Exception as exc:  # the exporter raises its own error types, RuntimeError, ...
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ExportError(f"ONNX export of net '{name}' failed: {type(exc).__name__}: {first}") from exc
    model = onnx.load_from_string(buffer.getvalue())
    _declare_output_shapes(model, module, batch if dynamic_batch else None)
    return model


def _declare_output_shapes(model, module: DeployModule, batch: int | None) -> None:
    """Output shapes as the net knows them: the batch axis "batch" where it carries the batch, unknown where the
    first axis is something else, the other axes static. (The TorchScript exporter can name axes wrongly, e.g.
    call a spatial axis of the pooling's size "batch", and onnxruntime plans its buffers from those names.) The
    intermediate value_info it wrote is dropped: onnxruntime infers it."""
    del model.graph.value_info[:]
    for output in model.graph.output:
        shape = output.type.tensor_type.shape
        shape.ClearField("dim")
        for axis, size in enumerate(module.output_shapes[output.name]):
            dim = shape.dim.add()
            if axis == 0 and batch is not None:
                if size == batch:
                    dim.dim_param = "batch"
            else:
                dim.dim_value = size


@contextlib.contextmanager
def _shape_inference_without_weights():
    """torch's TorchScript exporter hands its ONNX shape inference the weights too, which turns each of them into
    an ONNX constant: two extra copies of every weight at the peak (VGG-16: +1.6 GB). The weights are plain
    graph inputs of known shape here (export_params=False, and no layer takes a shape from a weight's values),
    so shape inference gets none. Private torch API: where it is missing, the export just uses more memory."""
    name = "_jit_pass_onnx_graph_shape_type_inference"
    original = getattr(torch._C, name, None)
    if original is None:
        yield
        return

    def without_weights(graph, params_dict, *args, **kwargs):
        return original(graph, {}, *args, **kwargs)

    setattr(torch._C, name, without_weights)
    try:
        yield
    finally:
        setattr(torch._C, name, original)


def _weights_by_input(module: DeployModule, model) -> dict[str, torch.Tensor]:
    """Graph inputs that are the module's weights (named by its state_dict keys, "conv1.weight", or by module
    path, "layers.3.weight"), renamed "<layer>/<blob index>" in the graph; returns {new name: tensor} in graph
    order."""
    blobs = {}
    for k, layer in enumerate(module.layers):
        present = [n for n in layer.blob_names if getattr(layer, n, None) is not None]
        for index, attr in enumerate(present):
            blobs[f"layers.{k}.{attr}"] = blobs[f"{layer.name}.{attr}"] = (
                f"{layer.name}/{index}",
                getattr(layer, attr),
            )
    rename, weights = {}, {}
    for value in model.graph.input:
        if value.name in blobs:
            new, tensor = blobs[value.name]
            rename[value.name] = new
            weights[new] = tensor
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for value in model.graph.input:
        value.name = rename.get(value.name, value.name)
    return weights


def _inputs_to_initializers(model, weights: dict[str, torch.Tensor]) -> None:
    keep = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def check_graph(model, what: str) -> None:
    """onnx.checker (with shape inference) on a model whose weights are still graph inputs."""
    onnx = require("onnx", "onnx", "ONNX export and checking")

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises ValidationError, InferenceError, ...
        raise ExportError(f"{what}: ONNX checker: {type(exc).__name__}: {exc}") from exc


def _write_model(f, model, weights: dict[str, torch.Tensor], data=None, data_name: str = "") -> None:
    """Serialize `model` with `weights` as GraphProto initializers, the float payloads written from the tensors'
    memory (or to the `data` file, referenced as external data). Protobuf reads fields in any order, so the
    initializers follow the rest of the graph."""
    onnx = require("onnx", "onnx", "ONNX export and checking")

    graph_field = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    raw_field = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    graph = model.graph.SerializeToString()
    parts, offset = [], 0
    for name, tensor in weights.items():
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        payload = memoryview(array.reshape(-1)).cast("B")
        proto = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=list(array.shape))
        if data is not None:
            proto.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(payload.nbytes))):
                proto.external_data.add(key=key, value=value)
            data.write(payload)
            offset += payload.nbytes
            parts.append((proto.SerializeToString(), None))
        else:
            parts.append((proto.SerializeToString() + len_header(raw_field, payload.nbytes), payload))
    sizes = [len(meta) + (payload.nbytes if payload is not None else 0) for meta, payload in parts]
    graph_size = len(graph) + sum(len(len_header(initializer_field, n)) + n for n in sizes)
    f.write(head.SerializeToString())
    f.write(len_header(graph_field, graph_size))
    f.write(graph)
    for (meta, payload), size in zip(parts, sizes):
        f.write(len_header(initializer_field, size))
        f.write(meta)
        if payload is not None:
            f.write(payload)


def check_onnx(path: str | Path) -> None:
    """onnx.checker on the file (by path, so models over 2 GB with external data are checked too)."""
    onnx = require("onnx", "onnx", "ONNX export and checking")

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError, InferenceError, ...
        raise ExportError(f"{path}: ONNX checker: {type(exc).__name__}: {exc}") from exc


@dataclass
class Comparison:
    """onnxruntime against our module on the same inputs: per output, the largest |difference| and the output's
    scale (its largest magnitude, at least 1e-2, as the conformance tolerance takes it)."""

    errors: dict[str, tuple[float, float]]

    @property
    def worst(self) -> float:
        """The largest error relative to its output's scale."""
        return max((err / scale for err, scale in self.errors.values()), default=0.0)

    def ok(self, rel: float = 1e-4) -> bool:
        return self.worst <= rel


def run_onnx(path: str | Path, inputs: dict[str, np.ndarray], threads: int | None = None) -> dict[str, np.ndarray]:
    """The model's outputs in onnxruntime (CPU) for `inputs` by name."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(f"onnxruntime is not installed: {install_hint('onnx')} to run ONNX models") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
        outputs = session.run(
            names, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items() if k in wanted}
        )
    except Exception as exc:  # onnxruntime's errors (Fail, InvalidArgument, ...) are not one type
        raise ExportError(f"{path}: onnxruntime: {type(exc).__name__}: {exc}") from exc
    return dict(zip(names, outputs))


def compare_onnx(module: DeployModule, path: str | Path, args: tuple[torch.Tensor, ...] | None = None) -> Comparison:
    """Run `args` (random inputs if None) through onnxruntime and through `module`; compare every output."""
    args = module.example_inputs() if args is None else args
    with torch.no_grad():
        ours = module(*args)
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = run_onnx(path, {n: a.detach().cpu().numpy() for n, a in zip(module.input_names, args)})
    errors = {}
    for name, mine in zip(module.output_names, ours):
        mine = mine.detach().cpu().numpy()
        other = theirs.get(name)
        if other is None or other.shape != mine.shape:
            raise ExportError(
                f"{path}: output '{name}' has shape {None if other is None else list(other.shape)} "
                f"in onnxruntime, {list(mine.shape)} in PyTorch"
            )
        errors[name] = _difference(mine, other)
    return Comparison(errors)


def _difference(mine: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(largest |difference|, scale); equal values (infinities, NaN in both) count as no difference."""
    if not mine.size:
        return 0.0, 1e-2
    same = (mine == other) | (np.isnan(mine) & np.isnan(other))
    diff = np.where(same, 0.0, np.abs(mine.astype(np.float64) - other))
    finite = np.abs(mine[np.isfinite(mine)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-2)
    worst = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("inf")
    return (float("inf") if np.isnan(diff).any() else worst), scale
