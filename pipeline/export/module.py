"""An export-ready view of a built net: its layers called in order as one plain function of the inputs.

`Net.forward` serves training and pycaffe-style inspection: it keeps every blob in `self._values`, reads
`self.feed`, runs layers that feed no loss under `no_grad`, turns torch errors into ours and sums the loss. All
of that is state a tracer either warns about (tensors assigned to attributes during export) or cannot follow.
`DeployModule` shares the net's layer modules (and so its parameters) and runs only the arithmetic:

    module = DeployModule(net)            # net built in TEST phase
    program = export_program(net)         # torch.export.ExportedProgram, dynamic batch
    program.module()(x)                   # the output tensor (a tuple for several outputs)

A few layer types compute their TEST-phase forward through state or Python-side caches that a tracer should
not see; `EXPORT_FORWARDS` gives those an export-friendly forward with the same numbers (see each function).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.net.layers.base import TEST, Layer
from pipeline.proto import caffe_pb2
from pipeline.registry import Registry


class ExportError(PipelineError):
    """A net that cannot be exported as asked (wrong phase, a layer with no export path, a failed check)."""


#: Caffe type -> forward(layer, *bottoms) used instead of the layer's own when exporting.
EXPORT_FORWARDS: Registry[Callable] = Registry("export forward")
#: Types whose forward cannot be exported at all, with the reason (checked before tracing, for a clear error).
NOT_EXPORTABLE = {
    "Filter": "its output size depends on the values of its selector input",
    "HDF5Output": "writes files",
}


def export_forward(*type_names: str):
    return EXPORT_FORWARDS.register(*type_names)


@export_forward("Split", "Dropout")
def _identity(layer: Layer, x: torch.Tensor):
    # Split tops are copies of the bottom and Dropout is the identity in TEST: no op at all in the graph.
    return (x,) * len(layer.top_names) if layer.type_name == "Split" else x


@export_forward("BatchNorm")
def _batch_norm(layer, x: torch.Tensor):
    # The layer's own forward gives its buffers zero .grad tensors and, with batch statistics, updates them:
    # neither belongs in an inference graph. Same arithmetic otherwise.
    if layer.use_global_stats:
        return layer._normalise_global(x)
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    return (x - mean) / torch.sqrt(var + layer.eps)


@export_forward("Pooling")
def _pooling(layer, x: torch.Tensor):
    """Caffe's pooling as ops whose ONNX meaning is unambiguous: explicit padding to exactly Caffe's windows,
    then floor-mode pooling. (ONNX's ceil_mode output size keeps a last window that starts in the padding, which
    Caffe and torch drop: onnx's shape inference then disagrees with the graph, and AVE divisors of clipped
    windows are the runtime's choice.) AVE divides the window sums by Caffe's per-position divisor, a constant."""
    P = caffe_pb2.PoolingParameter
    if layer.method == P.STOCHASTIC or len(layer.top_names) > 1:
        return layer(x)  # TEST-phase STOCHASTIC and the argmax top: the layer's own ops
    h, w = int(x.shape[2]), int(x.shape[3])  # static: only the batch axis is dynamic
    kernel, out = layer.geometry(h, w)
    (ph, pw), (sh, sw) = layer.pad, layer.stride
    far_h = (out[0] - 1) * sh + kernel[0] - h - ph
    far_w = (out[1] - 1) * sw + kernel[1] - w - pw
    padded = (ph, pw, far_h, far_w) != (0, 0, 0, 0)
    if layer.method == P.MAX:
        if padded:
            x = F.pad(x, (pw, far_w, ph, far_h), value=float("-inf"))
        return F.max_pool2d(x, kernel, layer.stride)
    if not padded:
        return F.avg_pool2d(x, kernel, layer.stride)
    sums = F.avg_pool2d(F.pad(x, (pw, far_w, ph, far_h)), kernel, layer.stride) * float(kernel[0] * kernel[1])
    divisor = _pool_divisor(h, w, kernel, layer.stride, layer.pad, out)
    return sums / divisor.to(x.dtype)


@export_forward("SPP")
def _spp(layer, x: torch.Tensor):
    # Caffe builds SPP from Pooling layers; export each level through the Pooling export path above.
    pools = layer.levels(int(x.shape[2]), int(x.shape[3]))
    if layer.height == 1:
        return _pooling(pools[0], x)
    return torch.cat([_pooling(pool, x).flatten(1) for pool in pools], dim=1)


def _pool_divisor(h, w, kernel, stride, pad, out) -> torch.Tensor:
    # A fresh constant per call (the layer caches its divisor; a cache filled while tracing would hold a fake).
    sizes = []
    for size, k, s, p, n in zip((h, w), kernel, stride, pad, out):
        sizes.append([min(i * s - p + k, size + p) - (i * s - p) for i in range(n)])
    return torch.tensor([[a * b for b in sizes[1]] for a in sizes[0]], dtype=torch.float32)


@export_forward("Reshape")
def _reshape(layer, x: torch.Tensor):
    # The layer caches its last top shape by comparing whole shapes; with a symbolic batch that comparison
    # would pin the batch. Where the top's first axis is the batch times a constant and the other axes do not
    # depend on the batch, reshape to (-1, ...) and the batch stays free.
    rest = tuple(int(d) for d in x.shape[1:])
    try:
        one, two = layer.top_shape((1, *rest)), layer.top_shape((2, *rest))
    except PipelineError:
        one = two = None
    if one and two and one[1:] == two[1:] and two[0] == 2 * one[0]:
        return x.reshape(-1, *one[1:])
    return layer(x)


@export_forward("ArgMax")
def _argmax(layer, x: torch.Tensor):
    # The layer sorts (stable) to break ties towards the larger index as Caffe does; ONNX has no stable Sort,
    # but its TopK puts the lower index first on ties, so TopK of the flipped axis gives Caffe's order there.
    def top_k(values: torch.Tensor, dim: int):
        size = values.shape[dim]
        best, order = torch.topk(values.flip(dim), layer.top_k, dim=dim, largest=True, sorted=True)
        return best, (size - 1 - order).to(values.dtype)

    if layer.axis is not None:
        best, index = top_k(x, layer.axis)
        return best if layer.out_max_val else index
    best, index = top_k(x.reshape(x.shape[0], -1), 1)
    rows = (index, best) if layer.out_max_val else (index,)
    static = (1, *(int(d) for d in x.shape[1:]))  # int() of the batch would pin it
    return torch.stack(rows, 1).reshape(x.shape[0], *layer._top_shape(static)[1:])


@export_forward("Im2col")
def _im2col(layer, x: torch.Tensor):
    # ONNX has no unfold: a grouped convolution with one-hot kernels picks the same patch values, in the same
    # channel order (c * kh * kw + kernel offset), exactly (each output is one input times 1).
    if len(layer.kernel) != 2 or layer.axis != 1:
        return layer(x)
    channels, (kh, kw) = int(x.shape[1]), layer.kernel
    eye = torch.eye(kh * kw, dtype=x.dtype).reshape(kh * kw, 1, kh, kw).repeat(channels, 1, 1, 1)
    return F.conv2d(x, eye, None, layer.stride, layer.pad, layer.dilation, channels)


@export_forward("Power")
def _power(layer, x: torch.Tensor):
    # The layer goes through an autograd.Function for Caffe's backward; the forward is this formula.
    if layer.power * layer.scale == 0:
        value = 1.0 if layer.power == 0 else float(torch.tensor(layer.shift, dtype=torch.float64) ** layer.power)
        return torch.full_like(x, value)
    y = x * layer.scale if layer.scale != 1 else x
    if layer.shift != 0:
        y = y + layer.shift
    if layer.power == 2:
        return y * y
    return y if layer.power == 1 else torch.pow(y, layer.power)


class DeployModule(nn.Module):
    """`net`'s layers run in order on its source-layer tops (the inputs); returns its output blobs, or the blobs
    named in `outputs` (an in-place blob gives its final value, as in Caffe).

    The layer modules are shared with `net`: weights loaded into either are seen by both. One output comes
    back as a tensor, several as a tuple in `output_names` order.

    `state_dict()` keys name the Caffe layer and blob, "<layer>.<blob name>" (`conv1.weight`, `bn1.mean_sum`),
    as `convert --to pt|safetensors` files do, and `load_state_dict` takes them; the modules themselves sit in
    `self.layers` by position (Caffe layer names may hold "." and "/"), which is what torch.export and ONNX see.
    """

    def __init__(self, net, outputs: list[str] | None = None):
        super().__init__()
        if net.phase != TEST:
            raise ExportError(f"net '{net.name}' was built in TRAIN phase: export needs the TEST (deploy) phase")
        for layer in net.layers:
            if layer.type_name in NOT_EXPORTABLE:
                raise ExportError(f"layer '{layer.name}' ({layer.type_name}): {NOT_EXPORTABLE[layer.type_name]}")
        # Every source layer's tops are inputs: Input layers, and the tops a data layer would have read.
        sources = [layer for layer in net.layers if layer.is_source]
        self.net_name = net.name
        self.layers = nn.ModuleList(layer for layer in net.layers if not layer.is_source)
        self.input_names = [top for layer in sources for top in layer.top_names]
        self.output_names = list(outputs) if outputs else [n for n in net.output_names if n not in self.input_names]
        unknown = [name for name in self.output_names if name not in net.blob_shapes]
        if unknown:
            raise ExportError(f"net '{net.name}' has no blob {', '.join(map(repr, unknown))} to output")
        if not self.input_names:
            raise ExportError(f"net '{net.name}' has no input (no Input layer)")
        if not self.output_names:
            raise ExportError(f"net '{net.name}' has no output blob")
        self.input_shapes = {name: net.blob_shapes[name] for name in self.input_names}
        self.output_shapes = {name: net.blob_shapes[name] for name in self.output_names}
        self._layer_index = {layer.name: i for i, layer in enumerate(self.layers)}
        self.register_state_dict_post_hook(_caffe_keys)
        self.register_load_state_dict_pre_hook(_module_keys)
        self.register_load_state_dict_post_hook(_caffe_missing_keys)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise ExportError(
                f"net '{self.net_name}' takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )
        values = dict(zip(self.input_names, inputs))
        for layer in self.layers:
            bottoms = [values[b] for b in layer.bottom_names]
            special = EXPORT_FORWARDS.get(layer.type_name) if layer.type_name in EXPORT_FORWARDS else None
            tops = special(layer, *bottoms) if special is not None else layer(*bottoms)
            if isinstance(tops, torch.Tensor):
                tops = (tops,)
            for name, top in zip(layer.top_names, tops):
                values[name] = top
        outputs = tuple(values[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def example_inputs(self, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of the net's input shapes, the batch (see `batch_inputs`) set to `batch` if given."""
        generator = torch.Generator().manual_seed(seed)
        shapes = [self.input_shapes[name] for name in self.input_names]
        flags = batch_inputs(tuple(torch.empty(s, device="meta") for s in shapes))
        return tuple(
            torch.randn((batch, *s[1:]) if batch and flag else s, generator=generator) for s, flag in zip(shapes, flags)
        )


def _caffe_key(module: DeployModule, key: str, prefix: str = "") -> str:
    """Renames "<prefix>layers.<i>.<rest>" to "<prefix><layer name>.<rest>"; other keys come back unchanged."""
    inner = prefix + "layers."
    if key.startswith(inner):
        index, _, rest = key[len(inner) :].partition(".")
        if index.isdigit() and int(index) < len(module.layers):
            return f"{prefix}{module.layers[int(index)].name}.{rest}"
    return key


def _caffe_keys(module: DeployModule, state: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the modules' keys renamed by Caffe layer (order kept)."""
    items = list(state.items())
    state.clear()
    state.update((_caffe_key(module, key, prefix), value) for key, value in items)


def _module_keys(module: DeployModule, state: dict, prefix: str, *_) -> None:
    """load_state_dict pre-hook: renames "<layer name>.<rest>" back to "layers.<i>.<rest>" (the longest layer
    name that fits: names may hold dots)."""
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix) :]
        cut = len(name)
        while (cut := name.rfind(".", 0, cut)) > 0:
            index = module._layer_index.get(name[:cut])
            if index is not None:
                state[f"{prefix}layers.{index}.{name[cut + 1 :]}"] = state.pop(key)
                break


def _caffe_missing_keys(module: DeployModule, incompatible) -> None:
    """load_state_dict post-hook: missing keys reported by their Caffe names (for a top-level module)."""
    incompatible.missing_keys[:] = [_caffe_key(module, key) for key in incompatible.missing_keys]


def batch_inputs(args: tuple[torch.Tensor, ...]) -> list[bool]:
    """Which inputs carry the batch: those whose first axis has the first input's size (a net's side inputs,
    such as a per-channel scale fed as a blob, keep static shapes)."""
    batch = args[0].shape[0] if args and args[0].dim() else None
    return [a.dim() > 0 and a.shape[0] == batch for a in args]


def export_program(
    net, batch: int = 2, dynamic_batch: bool = True, outputs: list[str] | None = None
) -> torch.export.ExportedProgram:
    """`torch.export.export` of the net's DeployModule; the batch axis symbolic where the net allows it."""
    module = DeployModule(net, outputs).eval()
    args = module.example_inputs(batch)
    dynamic = None
    if dynamic_batch:
        # AUTO: symbolic unless the net pins it (inputs that meet in a layer then share one symbol).
        dynamic = (tuple({0: torch.export.Dim.AUTO} if b else {} for b in batch_inputs(args)),)
    try:
        with torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
    except PipelineError:
        raise
    except Exception as exc:  # torch.export raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise ExportError(f"torch.export failed for net '{net.name}': {type(exc).__name__}: {exc}") from exc
    # Convolution keeps its weights in NHWC memory; the saved program's tensors should be plain row-major ones.
    for name, tensor in program.state_dict.items():
        if not tensor.is_contiguous():
            plain = tensor.detach().contiguous()
            program.state_dict[name] = (
                nn.Parameter(plain, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else plain
            )
    return program
