"""A net drawn as a graph (graphviz DOT, rendered by the `dot` program): Caffe's draw_net, for our nets.

Layers are boxes filled by type family (data, convolution, pooling, fully connected, activation, normalisation,
loss, ...), blobs are octagons, and the edge from a layer to each blob it writes carries the blob's shape (the
net is built on torch's meta device for that, so no memory is spent; a net that cannot be built, e.g. data not
there, is drawn without shapes). An in-place layer gives its blob a new octagon, so the graph has no cycles.

Teacher and student: the teacher's layers (name starting with the teacher prefix, "t_" by default; or every
param with lr_mult 0; or no weights of its own and fed only by teacher layers, such as its pooling and ReLUs)
sit in a cluster labelled "teacher". Frozen layers (every param lr_mult 0) have a dashed border and "frozen".
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.proto import caffe_pb2

FORMATS = ("png", "svg", "pdf", "dot")
FAMILY_COLOURS = {
    "data": "#c9daf8",
    "convolution": "#f4cccc",
    "pooling": "#fce5cd",
    "fully connected": "#ead1dc",
    "activation": "#d9ead3",
    "normalisation": "#fff2cc",
    "regularisation": "#d9d2e9",
    "loss": "#e6b8af",
    "metric": "#d0e0e3",
    "structure": "#eeeeee",
    "recurrent": "#b4a7d6",
    "other": "#ffffff",
}
# A registered type's family, weights and statistics are facts of its class (`draw_family`, `blob_names`,
# `blobs_are_statistics`). These are types from other Caffe forks that no class here builds, drawn by name.
OTHER_FORKS_FAMILY = {
    "DepthwiseConvolution": "convolution",
    "GELU": "activation",
    "Normalize": "normalisation",
    "Permute": "structure",
    "Recurrent": "recurrent",
}
OTHER_FORKS_WEIGHTED = {"DepthwiseConvolution"}
TEACHER_COLOUR, FROZEN_BORDER = "#b45f06", "#666666"


class DrawError(PipelineError):
    """The drawing could not be rendered (graphviz missing or failing); the DOT source was written."""


@dataclass
class DrawResult:
    output: Path
    dot: str
    teacher: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _registered(layer_type: str):
    """The Layer class of a registered type, else None (V1 names, other forks' types)."""
    from pipeline.net.layers.registry import LAYERS

    return LAYERS.get(layer_type) if layer_type in LAYERS else None


def family(layer_type: str) -> str:
    cls = _registered(layer_type)
    if cls is not None and (cls.draw_family or cls.is_loss or cls.is_source):
        return cls.draw_family or ("loss" if cls.is_loss else "data")
    if layer_type in OTHER_FORKS_FAMILY:
        return OTHER_FORKS_FAMILY[layer_type]
    if layer_type.endswith("Loss"):
        return "loss"
    if layer_type.endswith("Data"):
        return "data"
    return "other"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(values, h: int, w: int, default: int, square_as_one: bool = False) -> str:
    values = [h, w] if h or w else (list(values) or [default])
    if square_as_one and len(set(values)) == 1:
        return str(values[0])
    return "x".join(str(v) for v in (values * 2 if len(values) == 1 else values))


def details(layer: caffe_pb2.LayerParameter) -> str:
    """A few words on the layer's main parameters (kernel, stride, outputs...)."""
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel = _dims(p.kernel_size, p.kernel_h, p.kernel_w, 1)
        stride = _dims(p.stride, p.stride_h, p.stride_w, 1, True)
        text = f"{p.num_output} out, {kernel}, stride {stride}"
        pad = _dims(p.pad, p.pad_h, p.pad_w, 0, True)
        text += f", pad {pad}" if pad != "0" else ""
        return text + (f", group {p.group}" if p.group > 1 else "")
    if layer.type == "Pooling":
        p = layer.pooling_param
        pool = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if p.global_pooling:
            return f"{pool} global"
        kernel = _dims([p.kernel_size] if p.kernel_size else [], p.kernel_h, p.kernel_w, 1)
        return f"{pool} {kernel}, stride {_dims([p.stride], p.stride_h, p.stride_w, 1, True)}"
    if layer.type == "InnerProduct":
        return f"{layer.inner_product_param.num_output} out"
    if layer.type == "Dropout":
        return f"ratio {layer.dropout_param.dropout_ratio:g}"
    if layer.type == "KnowledgeDistillation":
        p = layer.knowledge_distillation_param
        return f"T {p.temperature:g}, alpha {p.alpha:g}"
    return ""


def _phase_of(layer: caffe_pb2.LayerParameter) -> str | None:
    """TRAIN or TEST when the layer is limited to one phase by its include/exclude rules."""
    include = {r.phase for r in layer.include if r.HasField("phase")}
    exclude = {r.phase for r in layer.exclude if r.HasField("phase")}
    if len(include) == 1 and len(include) == len(layer.include):
        return caffe_pb2.Phase.Name(include.pop())
    if len(exclude) == 1:
        return caffe_pb2.Phase.Name(caffe_pb2.TRAIN if exclude.pop() == caffe_pb2.TEST else caffe_pb2.TEST)
    return None


def frozen(layer: caffe_pb2.LayerParameter, blob_count: int | None = None) -> bool:
    """Every param has lr_mult 0 (params beyond the listed specs default to lr_mult 1)."""
    cls = _registered(layer.type)
    if (cls is not None and cls.blobs_are_statistics) or not layer.param:
        return False
    if blob_count is not None and blob_count > len(layer.param):
        return False
    return all(p.lr_mult == 0 for p in layer.param)


def _has_weights(layer_type: str) -> bool:
    cls = _registered(layer_type)
    return bool(cls.blob_names) if cls is not None else layer_type in OTHER_FORKS_WEIGHTED


def teacher_layers(layers, prefix: str, blob_counts: dict[str, int] | None = None) -> set[int]:
    """Indices of the teacher's layers: by name prefix, by frozen params, or weightless and fed only by them."""
    teacher: set[int] = set()
    from_teacher: dict[str, bool] = {}
    for i, layer in enumerate(layers):
        weightless = not layer.param and not _has_weights(layer.type)
        fed_by_teacher = bool(layer.bottom) and all(from_teacher.get(b, False) for b in layer.bottom)
        is_teacher = (
            (bool(prefix) and layer.name.startswith(prefix))
            or frozen(layer, (blob_counts or {}).get(layer.name))
            or (weightless and fed_by_teacher)
        )
        if is_teacher:
            teacher.add(i)
        for top in layer.top:
            from_teacher[top] = is_teacher
    return teacher


def _build(net_param: caffe_pb2.NetParameter, phase: str):
    """The net built for its shapes: on the meta device (no memory, no filling), else for real."""
    import torch

    from pipeline.net import Net

    try:
        with torch.device("meta"):
            return Net(net_param, phase=phase)
    except Exception:  # some layer's set-up may need real tensors: build it for real (the error, if any, is kept)
        return Net(net_param, phase=phase)


def blob_shapes(net_param: caffe_pb2.NetParameter, phases) -> tuple[dict, dict[str, int], list[str]]:
    """{phase: {blob: shape}}, {layer: number of blobs} and warnings, for each phase the net builds in."""
    shapes: dict[str, dict] = {}
    counts: dict[str, int] = {}
    warnings = []
    for phase in phases:
        try:
            net = _build(net_param, phase)
        except Exception as exc:  # a drawing goes on without shapes; the reason is reported
            warnings.append(f"no blob shapes for phase {phase} (the net does not build: {exc})")
            continue
        shapes[phase] = dict(net.blob_shapes)
        for layer in net.layers:
            counts[layer.name] = len(layer.blobs)
    return shapes, counts, warnings


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def net_to_dot(
    net: caffe_pb2.NetParameter,
    *,
    rankdir: str = "LR",
    label: str = "",
    teacher_prefix: str = "t_",
    shapes: dict[str, dict] | None = None,
    blob_counts: dict[str, int] | None = None,
    default_phase: str = "TRAIN",
) -> tuple[str, list[str], list[str]]:
    """DOT source for the layers of `net` (already filtered to a phase, or all), the teacher and frozen layers."""
    shapes = shapes or {}
    layers = list(net.layer)
    teacher = teacher_layers(layers, teacher_prefix, blob_counts)
    main: list[str] = []
    cluster: list[str] = []
    edges: list[str] = []
    latest: dict[str, str] = {}  # blob name -> node of its latest version (an in-place layer makes a new one)
    frozen_names: list[str] = []
    blob_ids: list[str] = []

    def blob_node(name: str, in_teacher: bool) -> str:
        node = f"blob{len(blob_ids)}"
        blob_ids.append(node)
        line = f'  {node} [label={_quote(name)}, shape=octagon, style=filled, fillcolor="#f3f3f3", fontsize=9]'
        (cluster if in_teacher else main).append(line)
        return node

    def shape_of(layer, blob: str) -> str | None:
        order = [_phase_of(layer) or default_phase, *shapes]
        for phase in order:
            if blob in shapes.get(phase, {}):
                return _shape_text(shapes[phase][blob])
        return None

    for i, layer in enumerate(layers):
        node = f"layer{i}"
        is_frozen = frozen(layer, (blob_counts or {}).get(layer.name))
        lines = [layer.name, layer.type]
        lines += [text for text in (details(layer),) if text]
        if default_phase == "ALL" and _phase_of(layer):
            lines.append(f"[{_phase_of(layer)} only]")
        style = "filled,rounded"
        extra = ""
        if is_frozen:
            frozen_names.append(layer.name)
            lines.append("frozen (lr_mult 0)")
            style += ",dashed"
            extra = f', color="{FROZEN_BORDER}", penwidth=1.6'
        colour = FAMILY_COLOURS[family(layer.type)]
        (cluster if i in teacher else main).append(
            f'  {node} [label={_quote(chr(10).join(lines))}, shape=box, style="{style}", fillcolor="{colour}"{extra}]'
        )
        for bottom in layer.bottom:
            if bottom not in latest:
                latest[bottom] = blob_node(bottom, False)
            edges.append(f"  {latest[bottom]} -> {node}")
        for top in layer.top:
            if top not in latest or top in layer.bottom:
                latest[top] = blob_node(top, i in teacher)
            shape = shape_of(layer, top)
            edges.append(f"  {node} -> {latest[top]}" + (f" [label={_quote(shape)}]" if shape else ""))
    out = [
        f"digraph {_quote(net.name or 'net')} {{",
        f'  graph [rankdir={rankdir}, label={_quote(label)}, labelloc=t, fontname="Helvetica", fontsize=14,'
        " nodesep=0.2, ranksep=0.35]",
        '  node [fontname="Helvetica", fontsize=10]',
        '  edge [fontname="Helvetica", fontsize=8, color="#555555", fontcolor="#555555"]',
        *main,
    ]
    if cluster:
        out += [
            "  subgraph cluster_teacher {",
            f'    label="teacher"; fontcolor="{TEACHER_COLOUR}"; color="{TEACHER_COLOUR}"; penwidth=2;',
            '    style="rounded,filled"; fillcolor="#fff8f0";',
            *("  " + line for line in cluster),
            "  }",
        ]
    out += [*edges, "}"]
    return "\n".join(out) + "\n", [layers[i].name for i in sorted(teacher)], frozen_names


def render(dot_text: str, output: str | Path, timeout: float = 120) -> Path:
    """Write `output` (.dot: the source; else rendered by graphviz's `dot`). Without `dot`, the source is
    written beside it and DrawError says how to install graphviz."""
    output = Path(output)
    fmt = output.suffix.lstrip(".").lower()
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        output.write_text(dot_text)
        return output
    dot_path = output.with_suffix(".dot")
    exe = shutil.which("dot")
    if exe is None:
        dot_path.write_text(dot_text)
        raise DrawError(
            f"graphviz's `dot` program is not installed, so {output} was not drawn; the graph is in {dot_path}. "
            f"Install graphviz (Debian/Ubuntu: `apt-get install graphviz`; macOS: `brew install graphviz`), "
            f"then run `dot -T{fmt} {dot_path} -o {output}` or this command again."
        )
    try:
        proc = subprocess.run(
            [exe, f"-T{fmt}", "-o", str(output)], input=dot_text, text=True, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        dot_path.write_text(dot_text)
        raise DrawError(f"graphviz's dot took over {timeout:g} s on {dot_path}; try --rankdir TB") from None
    if proc.returncode != 0 or not output.exists():
        dot_path.write_text(dot_text)
        raise DrawError(f"graphviz's dot failed on {dot_path}: {proc.stderr.strip()}")
    return output


def draw_net(
    net: caffe_pb2.NetParameter,
    output: str | Path,
    *,
    rankdir: str = "LR",
    phase: str = "ALL",
    teacher_prefix: str = "t_",
    shapes: bool = True,
) -> DrawResult:
    """Draw a NetParameter to `output` (.png, .svg, .pdf or .dot). phase: TRAIN, TEST or ALL (every layer)."""
    from pipeline.net import PHASES
    from pipeline.text.netspec import filter_net, net_state

    if rankdir not in ("LR", "TB", "BT", "RL"):
        raise ValueError(f"rankdir must be LR, TB, BT or RL, not {rankdir!r}")
    if phase not in ("TRAIN", "TEST", "ALL"):
        raise ValueError(f"phase must be TRAIN, TEST or ALL, not {phase!r}")
    if Path(output).suffix.lstrip(".").lower() not in FORMATS:
        raise ValueError(f"{output}: the format comes from the suffix: one of {', '.join(FORMATS)}")
    drawn = net if phase == "ALL" else filter_net(net, net_state(net, PHASES[phase]))
    phases = ("TRAIN", "TEST") if phase == "ALL" else (phase,)
    found, counts, warnings = blob_shapes(net, phases) if shapes else ({}, {}, [])
    dot, teacher, frozen_names = net_to_dot(
        drawn,
        rankdir=rankdir,
        label=f"{net.name or 'net'} ({phase if phase != 'ALL' else 'all phases'})",
        teacher_prefix=teacher_prefix,
        shapes=found,
        blob_counts=counts,
        default_phase=phase,
    )
    result = DrawResult(Path(output), dot, teacher, frozen_names, warnings)
    render(dot, output)
    return result


def draw_net_file(path: str | Path, output: str | Path, *, variables: dict | None = None, **options) -> DrawResult:
    """Draw a net prototxt file (a Jinja template is rendered with `variables` first)."""
    from pipeline.text.prototxt import read_net

    return draw_net(read_net(path, variables), output, **options)
