"""Reading a solver prototxt and building its train and test nets, as Caffe's Solver::Init does.

Paths in a solver (`net`, `train_net`, `test_net`, `snapshot_prefix`) are relative to the current directory,
as in Caffe; a net path that does not exist there is also looked up beside the solver file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError, SolverError
from pipeline.glog import get_logger
from pipeline.net import Net
from pipeline.proto import caffe_pb2
from pipeline.prototxt import parse_text, read_text
from pipeline.upgrade import upgrade_net

TYPE_OF_ENUM = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def read_solver_param(path: str | Path, variables: dict | None = None) -> tuple[caffe_pb2.SolverParameter, str]:
    """Render and parse a solver prototxt, upgraded as Caffe's ReadSolverParamsFromTextFileOrDie does.

    Returns the message and the rendered text (saved beside the snapshots by `train`).
    """
    text = read_text(path, variables)
    param = parse_text(text, caffe_pb2.SolverParameter(), str(path))
    upgrade_solver(param, str(path))
    return param, text


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
