"""An export-ready view of a built net: its layers called in order as one plain function of the inputs.

`Net.forward` serves training and pycaffe-style inspection: it keeps every blob in `self._values`, reads
`self.feed`, runs layers that feed no loss under `no_grad`, turns torch errors into ours and sums the loss. All
of that is state a tracer either warns about (tensors assigned to attributes during export) or cannot follow.
`DeployModule` shares the net's layer modules (and so its parameters) and runs only the arithmetic:

    module = DeployModule(net)            # net built in TEST phase
    program = export_program(net)         # torch.export.ExportedProgram, dynamic batch
    program.module()(x)                   # the output tensor (a tuple for several outputs)

A few layer types compute their TEST-phase forward through state or Python-side caches that a tracer should
not see; their class's `export_forward` gives an export-friendly forward with the same numbers (the base class's
is the layer's own forward), and a type that cannot be exported says why in its `not_exportable`.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.net.layers.base import TEST


class ExportError(PipelineError):
    """A net that cannot be exported as asked (wrong phase, a layer with no export path, a failed check)."""


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
            if layer.not_exportable:
                raise ExportError(f"layer '{layer.name}' ({layer.type_name}): {layer.not_exportable}")
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
            tops = layer.export_forward(*bottoms)
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
