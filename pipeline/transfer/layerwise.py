"""Running a layer-at-a-time schedule: one Caffe solver per stage, weights handed on, resumable.

Stage k trains its copy of the net (planned by schedule.py) with the solver prototxt's settings plus the stage's
overrides, starting from stage k-1's final weights (stage 1 from `--weights`), and snapshots under
`<snapshot_prefix>_<stage>_iter_N`. A state file (`<snapshot_prefix>_layerwise.state`, text) records each finished
stage and its weights; run again and finished stages are skipped, and a stage that was stopped (Ctrl-C, SIGHUP
snapshot, a crash after a snapshot) resumes from its latest snapshot: weights, solver history, iteration, the data
position (batches already seen are skipped) and, when the run was stopped through the solver, the dropout RNG.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from google.protobuf import text_format

from pipeline.errors import WeightsError
from pipeline.glog import get_logger
from pipeline.proto import caffe_pb2
from pipeline.solvers import share_weights, solver_class
from pipeline.solvers.nets import collect_nets
from pipeline.text.prototxt import parse_text
from pipeline.transfer import netedit
from pipeline.transfer.netedit import TransferError
from pipeline.transfer.schedule import StagePlan, compile_schedule, digest, merge_over
from pipeline.transfer.schema import Schedule, State
from pipeline.weights.io import atomic_write, copy_weights

NET_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param")
WeightSpec = str | Path | tuple[str | Path, dict[str, str]]


@dataclass
class StageResult:
    name: str
    weights: str | None
    iter: int
    done: bool
    test_scores: list[dict] = field(default_factory=list)


@dataclass
class RunResult:
    stages: list[StageResult]
    stopped: bool
    state_file: str

    @property
    def final_weights(self) -> str | None:
        return self.stages[-1].weights if self.stages and self.stages[-1].done else None

    def print_summary(self, stage_prefix: str = "", show_state: bool = False) -> int:
        """One line per stage (with its test scores), then the final weights; the tools' exit status (3: stopped)."""
        for stage in self.stages:
            scores = ", ".join(f"{k} = {v:.6g}" for s in stage.test_scores for k, v in s.items() if k != "iter")
            state = "done" if stage.done else "stopped"
            print(f"{stage_prefix}{stage.name}: iter {stage.iter} {state} {stage.weights or ''}")
            if scores:
                tested = sorted({s["iter"] for s in stage.test_scores if "iter" in s})
                print(f"  test (iter {', '.join(map(str, tested))}): {scores}")
        if show_state:
            print(f"state: {self.state_file}")
        if self.stopped:
            print("stopped: run the same command again to resume")
            return 3
        print(f"final weights: {self.final_weights}")
        return 0


def _weight_items(weights: Iterable[WeightSpec]) -> list[tuple[str, dict[str, str]]]:
    items = []
    for spec in weights:
        path, rename = spec if isinstance(spec, tuple) else (spec, {})
        if not Path(path).is_file():
            raise WeightsError(f"weights file '{path}' not found")
        items.append((str(path), dict(rename)))
    return items


class LayerwiseRun:
    """Plans (and so checks) the whole schedule on construction; `run()` trains the stages still to do."""

    def __init__(
        self,
        solver_param: caffe_pb2.SolverParameter,
        schedule: Schedule,
        solver_path: str | None = None,
        variables: dict | None = None,
        weights: Iterable[WeightSpec] = (),
        state_file: str | Path | None = None,
        device: torch.device | str | None = None,
        progress: bool | None = None,
        on_solver: Callable[[object, StagePlan], None] | None = None,
        action_request: Callable[[], str] | None = None,
    ):
        self.log = get_logger()
        self.base = solver_param
        self.schedule = schedule
        self.device, self.progress = device, progress
        self.on_solver, self.action_request = on_solver, action_request
        self.weights = _weight_items(weights)
        if not solver_param.snapshot_prefix:
            raise TransferError("the solver needs a snapshot_prefix: stages hand their weights on through snapshots")
        self.prefix = solver_param.snapshot_prefix
        self.state_file = Path(state_file or f"{self.prefix}_layerwise.state")
        sources = collect_nets(solver_param, solver_path, variables)
        train = sources.train[1]
        self.info = netedit.probe(train)
        self.plans = compile_schedule(schedule, train, [net for _, net in sources.tests], self.info)
        self.digest = digest(schedule)

    # ----- state file ------------------------------------------------------------------------------------------
    def load_state(self) -> State:
        state = State(schedule_digest=self.digest)
        if self.state_file.exists():
            state = parse_text(self.state_file.read_text(), State(), str(self.state_file))
            if state.schedule_digest != self.digest:
                raise TransferError(
                    f"state file '{self.state_file}' was written for a different schedule: remove it (or pass "
                    "--restart) to start over"
                )
        names = [p.name for p in self.plans]
        for i, record in enumerate(state.stage):
            if i >= len(names) or record.name != names[i]:
                raise TransferError(
                    f"state file '{self.state_file}': stage #{i + 1} '{record.name}' is not in the plan"
                )
        while len(state.stage) < len(self.plans):
            state.stage.add(name=self.plans[len(state.stage)].name)
        return state

    def save_state(self, state: State) -> None:
        atomic_write(self.state_file, text_format.MessageToString(state).encode())

    # ----- one stage -------------------------------------------------------------------------------------------
    def stage_param(self, plan: StagePlan) -> caffe_pb2.SolverParameter:
        param = merge_over(self.base, plan.solver_overrides)
        for name in NET_FIELDS:
            param.ClearField(name)
        param.train_net_param.CopyFrom(plan.train_net)
        for net in plan.test_nets:
            param.test_net_param.add().CopyFrom(net)
        param.snapshot_prefix = f"{self.prefix}_{plan.name}"
        param.snapshot_after_train = True
        if plan.index > 0:
            param.ClearField("weights")
        return param

    def _latest_snapshot(self, plan: StagePlan, record) -> Path | None:
        """The snapshot a started stage resumes from: the one recorded when it stopped, else its newest on disk
        written since it started (a crash after a periodic snapshot); None for a stage not started."""
        if not record.HasField("started_at"):
            return None
        if record.solverstate and Path(record.solverstate).exists():
            return Path(record.solverstate)
        prefix = Path(f"{self.prefix}_{plan.name}")
        pattern = re.compile(re.escape(prefix.name) + r"_iter_(\d+)\.solverstate(\.h5)?$")
        found = [
            (int(m.group(1)), p)
            for p in prefix.parent.glob(prefix.name + "_iter_*")
            if (m := pattern.match(p.name)) and p.stat().st_mtime >= record.started_at
        ]
        return max(found)[1] if found else None

    def _load(self, solver, path: str, rename: dict[str, str]) -> None:
        report = copy_weights(solver.net, path, rename)
        if not report.copied:
            raise WeightsError(f"{path}: no layer of this file matches a layer of the net '{solver.net.name}'")
        self.log.info("Copied %d layers from %s", len(report.copied), path)
        for net in solver.test_nets:
            copy_weights(net, path, rename)
            share_weights(solver.net, net)

    def _run_stage(self, plan: StagePlan, record, previous: str | None, resume: Path | None) -> object:
        what = "every layer the net lets learn" if plan.trainable is None else ", ".join(plan.trainable)
        self.log.info(
            "Layer-wise stage %d/%d '%s': training %s for %d iterations",
            plan.index + 1,
            len(self.plans),
            plan.name,
            what,
            plan.max_iter,
        )
        if plan.aux_head:
            self.log.info("Auxiliary head %s_fc attached; net losses switched off: %s", plan.aux_head, plan.silenced)
        param = self.stage_param(plan)
        solver = solver_class(param.type)(param, device=self.device, progress=self.progress)
        if self.on_solver is not None:
            self.on_solver(solver, plan)
        if resume is None:
            for path, rename in [(previous, {})] if previous else self.weights:
                self._load(solver, path, rename)
        solver.action_request = self.action_request
        if resume is not None:
            self.log.info("Resuming stage '%s': restoring previous solver status from %s", plan.name, resume)
            solver.restore(resume)
            skip_batches(solver.net, solver.iter * solver.param.iter_size)
            if record.rng_state and record.iter == solver.iter:
                _generator(solver.net).set_state(torch.frombuffer(bytearray(record.rng_state), dtype=torch.uint8))
        solver.solve()
        # The stage's final score: Caffe tests at the last iteration only when it is a multiple of test_interval,
        # so a stage shorter than test_interval would report iteration 0's; test its final weights here instead.
        tested = [scores.get("iter") for scores in solver.test_scores]
        if not solver.requested_early_exit and solver.test_nets and tested != [solver.iter] * len(solver.test_nets):
            solver.test_all()
        return solver

    # ----- the whole schedule ----------------------------------------------------------------------------------
    def run(self) -> RunResult:
        state = self.load_state()
        results: list[StageResult] = []
        previous = None
        for plan, record in zip(self.plans, state.stage):
            if record.done:
                self.log.info("Stage '%s' already done: %s", plan.name, record.weights)
                previous = record.weights
                results.append(StageResult(plan.name, record.weights, record.iter, True))
                continue
            resume = self._latest_snapshot(plan, record)
            if resume is None:
                record.started_at = time.time()
            self.save_state(state)
            solver = self._run_stage(plan, record, previous, resume)
            record.iter = solver.iter
            scores = [dict(s) for s in solver.test_scores]
            if solver.requested_early_exit:
                record.solverstate = solver.last_snapshot or ""
                record.rng_state = _generator(solver.net).get_state().numpy().tobytes()
                self.save_state(state)
                self.log.info("Stopped in stage '%s' at iteration %d; run again to resume", plan.name, solver.iter)
                results.append(StageResult(plan.name, None, solver.iter, False, scores))
                return RunResult(results, True, str(self.state_file))
            hdf5 = solver.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
            record.weights = solver.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
            record.done = True
            for name in ("solverstate", "rng_state", "started_at"):
                record.ClearField(name)
            self.save_state(state)
            previous = record.weights
            results.append(StageResult(plan.name, record.weights, solver.iter, True, scores))
            netedit.close_sources(solver.net)
            for net in solver.test_nets:
                netedit.close_sources(net)
        return RunResult(results, False, str(self.state_file))


def _generator(net) -> torch.Generator:
    for layer in net.layers:
        if layer.generator is not None:
            return layer.generator
    raise TransferError(f"net '{net.name}' has no random generator")


def skip_batches(net, count: int) -> None:
    """Draw `count` batches from the net's source layers and drop them (the data position of a resumed stage)."""
    if count <= 0:
        return
    sources = [layer for layer in net.layers if layer.is_source]
    get_logger().info("Skipping %d batches already seen in this stage", count)
    with torch.no_grad():
        for _ in range(count):
            for layer in sources:
                layer()
