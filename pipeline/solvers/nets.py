"""Reading a solver prototxt and building its train and test nets, as Caffe's Solver::Init does.

Paths in a solver (`net`, `train_net`, `test_net`, `snapshot_prefix`) are relative to the current directory,
as in Caffe; a net path that does not exist there is also looked up beside the solver file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from pipeline.errors import PipelineError, SolverError
from pipeline.glog import get_logger
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import parse_text, read_text
from pipeline.text.template import check_variables_used, template_variables
from pipeline.text.upgrade import upgrade_net

TYPE_OF_ENUM = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def read_solver_param(
    path: str | Path, variables: dict | None = None, set_fields: bool = False, other_templates=()
) -> tuple[caffe_pb2.SolverParameter, str]:
    """Render and parse a solver prototxt, upgraded as Caffe's ReadSolverParamsFromTextFileOrDie does.

    Returns the message and the rendered text (saved beside the snapshots by `train`). With `set_fields` (the
    command line's `--set`), each variable is a template variable first (of the solver, its net files or
    `other_templates`); one that none of them reads sets the SolverParameter field of its name (`max_iter=20`,
    logged as Caffe logs its flags); any other is an error naming it. The text then shows the fields set.
    """
    text = read_text(path, variables)
    param = parse_text(text, caffe_pb2.SolverParameter(), str(path))
    if set_fields and variables:
        used = template_variables(path).union(*(template_variables(t) for t in other_templates))
        fields = {k: v for k, v in variables.items() if k not in used and k in SETTABLE_FIELDS}
        # A net template reading the name wins over the field; the nets are those the fields' values name.
        trial = _copy(param)
        set_solver_fields(trial, fields, str(path))
        net_files = _net_files(trial, str(path))
        used = used.union(*(template_variables(f) for f in net_files))
        fields = {k: v for k, v in fields.items() if k not in used}
        templates = [str(path), *net_files, *map(str, other_templates)]
        check_variables_used(variables, used, templates, set(SETTABLE_FIELDS), "SolverParameter")
        if fields:
            for name, shown in set_solver_fields(param, fields, str(path)).items():
                get_logger().info("Setting %s = %s from --set", name, shown)
            sets = ", ".join(f"{k}={v}" for k, v in variables.items() if k in fields)
            text = f"# {path} rendered, with --set {sets}\n" + text_format.MessageToString(param)
    upgrade_solver(param, str(path))
    return param, text


# Fields `--set` may set: every scalar (or repeated scalar) field of SolverParameter.
SETTABLE_FIELDS = {
    f.name: f
    for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields
    if f.type not in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)
}


def set_solver_fields(param: caffe_pb2.SolverParameter, values: dict, path: str = "<solver>") -> dict[str, str]:
    """Set SolverParameter fields from `--set` values (a list for a repeated field); returns each as shown."""
    shown = {}
    for name, value in values.items():
        field = SETTABLE_FIELDS[name]
        repeated = field.is_repeated
        items = list(value) if repeated and isinstance(value, (list, tuple)) else [value]
        converted = [_field_value(field, item, path) for item in items]
        if repeated:
            getattr(param, name)[:] = converted
        else:
            setattr(param, name, converted[0])
        names = [field.enum_type.values_by_number[v].name if field.enum_type else v for v in converted]
        texts = [("true" if v else "false") if isinstance(v, bool) else str(v) for v in names]
        shown[name] = ", ".join(texts) if repeated else texts[0]
    return shown


def _field_value(field, value, path: str):
    def bad(expected: str) -> SolverError:
        return SolverError(f"{path}: --set {field.name}={value!r}: {field.name} takes {expected}")

    kind = field.cpp_type
    if field.enum_type is not None:
        by_name = {v.name.upper(): v.number for v in field.enum_type.values}
        if isinstance(value, str) and value.upper() in by_name:
            return by_name[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and value in field.enum_type.values_by_number:
            return value
        raise bad("one of " + ", ".join(v.name for v in field.enum_type.values))
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise bad("true or false")
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if isinstance(value, (list, tuple, dict, set)):
            raise bad("a string")
        return value if isinstance(value, str) else str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad("a number")
    if kind in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return float(value)
    if isinstance(value, float) and not value.is_integer():
        raise bad("an integer")
    if value < 0 and kind in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
        raise bad("a non-negative integer")
    return int(value)


def _net_files(param: caffe_pb2.SolverParameter, solver_path: str) -> list[str]:
    """The net files a solver names that exist (as `read_net_file` finds them)."""
    names = [param.net] if param.HasField("net") else []
    names += [param.train_net] if param.HasField("train_net") else []
    names += list(param.test_net)
    found = (resolve(name, solver_path) for name in dict.fromkeys(names))
    return [str(p) for p in found if p.is_file()]


def upgrade_solver(param: caffe_pb2.SolverParameter, path: str | None = None) -> caffe_pb2.SolverParameter:
    """The deprecated `solver_type` enum becomes `type`; snapshot_prefix gets Caffe's defaults."""
    log = get_logger()
    if param.HasField("solver_type"):
        if param.HasField("type") and param.type != TYPE_OF_ENUM[param.solver_type]:
            raise SolverError(
                f"{path or '<solver>'}: both type '{param.type}' and the deprecated solver_type "
                f"{caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)} are given and differ"
            )
        param.type = TYPE_OF_ENUM[param.solver_type]
        param.ClearField("solver_type")
    if path is not None:
        if not param.HasField("snapshot_prefix"):
            param.snapshot_prefix = str(Path(path).with_suffix(""))
            log.info("snapshot_prefix was not specified and is set to %s", param.snapshot_prefix)
        elif os.path.isdir(param.snapshot_prefix):
            param.snapshot_prefix = str(Path(param.snapshot_prefix) / Path(path).stem)
            log.info("snapshot_prefix is a directory and is set to %s", param.snapshot_prefix)
    return param


@dataclass
class NetSources:
    """Where each net came from, with the rendered text of every net file read (for saving beside snapshots)."""

    train: tuple[str, caffe_pb2.NetParameter] | None = None
    tests: list[tuple[str, caffe_pb2.NetParameter]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


def resolve(path: str, solver_path: str | None) -> Path:
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute() or solver_path is None:
        return candidate
    beside = Path(solver_path).parent / path
    return beside if beside.exists() else candidate


def read_net_file(path: str, solver_path: str | None, variables: dict | None, sources: NetSources):
    resolved = resolve(path, solver_path)
    if not resolved.exists():
        where = f" (nor beside the solver {solver_path})" if solver_path else ""
        raise SolverError(f"{solver_path or '<solver>'}: net file '{path}' not found in {os.getcwd()}{where}")
    text = read_text(resolved, variables)
    sources.texts.setdefault(str(path), text)
    return upgrade_net(parse_text(text, caffe_pb2.NetParameter(), str(resolved)), str(resolved))


def collect_nets(
    param: caffe_pb2.SolverParameter, solver_path: str | None = None, variables: dict | None = None
) -> NetSources:
    """Caffe's InitTrainNet/InitTestNets: which NetParameters to build, with the checks Caffe makes."""
    log = get_logger()
    sources = NetSources()
    fields = ("net", "net_param", "train_net", "train_net_param")
    given = [f for f in fields if param.HasField(f)]
    if len(given) != 1:
        what = "must specify a train net using one of" if not given else "must not contain more than one of"
        raise SolverError(
            f"{solver_path or '<solver>'}: SolverParameter {what} these fields: {', '.join(fields)}"
            + (f" (found {', '.join(given)})" if given else "")
        )
    source = given[0]
    if source.endswith("_param"):
        log.info("Creating training net specified in %s.", source)
        net_param = upgrade_net(_copy(getattr(param, source)), solver_path or "<solver>")
    else:
        log.info("Creating training net from %s file: %s", source, getattr(param, source))
        net_param = read_net_file(getattr(param, source), solver_path, variables, sources)
    sources.train = (source, _with_state(net_param, caffe_pb2.TRAIN, [param.train_state]))

    generic = [f for f in ("net", "net_param") if param.HasField(f)]
    n_specific = len(param.test_net_param) + len(param.test_net)
    if generic and len(param.test_iter) < n_specific or not generic and len(param.test_iter) != n_specific:
        raise SolverError(
            f"{solver_path or '<solver>'}: test_iter must be specified for each test network "
            f"({len(param.test_iter)} test_iter for {n_specific} test net(s))"
        )
    n_instances = len(param.test_iter)
    if param.test_state and len(param.test_state) != n_instances:
        raise SolverError(
            f"{solver_path or '<solver>'}: test_state must be unspecified or specified once per test "
            f"net ({len(param.test_state)} for {n_instances})"
        )
    if n_instances and param.test_interval <= 0:
        raise SolverError(
            f"{solver_path or '<solver>'}: test_interval must be > 0 when test nets are given "
            f"(got {param.test_interval}); remove test_iter to train without testing"
        )
    specs = [("test_net_param", _copy(p)) for p in param.test_net_param]
    specs += [(f"test_net file: {p}", p) for p in param.test_net]
    remaining = n_instances - len(specs)
    if param.HasField("net_param"):
        specs += [("net_param", _copy(param.net_param)) for _ in range(remaining)]
    elif param.HasField("net"):
        specs += [(f"net file: {param.net}", param.net) for _ in range(remaining)]
    for i, (desc, spec) in enumerate(specs):
        net = read_net_file(spec, solver_path, variables, sources) if isinstance(spec, str) else upgrade_net(spec)
        states = [param.test_state[i]] if param.test_state else []
        sources.tests.append((desc, _with_state(net, caffe_pb2.TEST, states)))
    return sources


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def _with_state(net: caffe_pb2.NetParameter, phase: int, overrides) -> caffe_pb2.NetParameter:
    """The solver's phase, then the net's own state, then train_state/test_state: Caffe's MergeFrom order."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net.state)
    for override in overrides:
        state.MergeFrom(override)
    net.state.CopyFrom(state)
    return net


def build(net_param: caffe_pb2.NetParameter, seed: int | None, source: str, filler_rng=None) -> Net:
    state = net_param.state
    try:
        return Net(
            net_param, phase=state.phase, level=state.level, stages=(), seed=seed, source=source, filler_rng=filler_rng
        )
    except PipelineError:
        raise
    except (OSError, ValueError) as exc:
        raise SolverError(f"{source}: cannot build net '{net_param.name}': {exc}") from None
