"""`train`: Caffe's `caffe train --solver S [--weights a,b | --snapshot x.solverstate]`, on PyTorch.

The log (glog lines) goes to the terminal and to `<snapshot_prefix>_train_<time>.log`; the rendered solver and
net prototxts (after Jinja) are saved beside the snapshots, so a snapshot always has the exact text it came from.
Signals, as Caffe's SignalHandler: SIGINT (Ctrl-C) stops after the current iteration, and stopping writes the
final snapshot (snapshot_after_train, on by default); SIGHUP writes a snapshot and goes on. A second Ctrl-C
aborts at once.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from pipeline.cli import command
from pipeline.cli._common import device_from_flag
from pipeline.errors import PipelineError, SolverError
from pipeline.glog import get_logger, log_fatal, setup_logging
from pipeline.solvers import read_solver_param, solver_class
from pipeline.solvers.base import NONE, SNAPSHOT, STOP, fmt
from pipeline.solvers.snapshot import check_writable
from pipeline.text.template import parse_assignments
from pipeline.viz.report import PhaseTimer, report_for_solver
from pipeline.weights.io import atomic_write
from pipeline.weights.name_map import load_weights, parse_weights_map

EFFECTS = {"stop": STOP, "snapshot": SNAPSHOT, "none": NONE}


def add_arguments(parser):
    parser.add_argument("--solver", required=True, help="solver prototxt (may be a Jinja template)")
    parser.add_argument(
        "--weights",
        default="",
        help="comma-separated .caffemodel/.caffemodel.h5 files to fine-tune from (layers copied by name)",
    )
    parser.add_argument(
        "--weights-map",
        action="append",
        default=[],
        metavar="[FILE:]OLD=NEW,...|MAPFILE",
        help="load --weights into layers of other names: conv1=t_conv1, '*=t_*' (a prefix), "
        "a.caffemodel:*=t1_* (one file only), or a map file of 'OLD NEW' lines; see pipeline/weights/name_map.py",
    )
    parser.add_argument("--snapshot", default="", help=".solverstate or .solverstate.h5 to resume from")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="template variable for the solver and net prototxts",
    )
    parser.add_argument(
        "--sigint_effect",
        default="stop",
        choices=sorted(EFFECTS),
        help="what Ctrl-C does: stop (and write the final snapshot), snapshot, none",
    )
    parser.add_argument(
        "--sighup_effect",
        default="snapshot",
        choices=sorted(EFFECTS),
        help="what SIGHUP does: snapshot (and go on), stop, none",
    )
    parser.add_argument("--level", type=int, default=0, help="train net state level")
    parser.add_argument("--stage", default="", help="comma-separated train net state stages")
    parser.add_argument("--gpu", default=None, help="GPU id to train on ('all' = the first); else solver_mode")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar even on a terminal"
    )


class SignalActions:
    """Caffe's SignalHandler: remembers signals and hands each out once as a solver action."""

    def __init__(self, sigint_effect: str, sighup_effect: str):
        self.effects = {signal.SIGINT: EFFECTS[sigint_effect]}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = EFFECTS[sighup_effect]
        self.pending: list[int] = []
        self.previous: dict[int, object] = {}
        self.interrupts = 0

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt
            get_logger().info(
                "Caught SIGINT: will %s after this iteration (Ctrl-C again to abort at once)",
                {STOP: "stop", SNAPSHOT: "snapshot", NONE: "ignore it"}[self.effects[signum]],
            )
        self.pending.append(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.effects:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __call__(self) -> str:
        # SIGHUP first, as Caffe checks it first.
        for signum in sorted(self.pending, key=lambda s: s != getattr(signal, "SIGHUP", None)):
            self.pending.remove(signum)
            if signum == signal.SIGINT and self.effects[signum] != STOP:
                self.interrupts = 0
            return self.effects[signum]
        return NONE


def save_rendered(prefix: str, solver_text: str, net_texts: dict[str, str]) -> list[str]:
    written = []
    targets = [(f"{prefix}_solver.prototxt", solver_text)]
    for path, text in net_texts.items():
        name = "net" if len(net_texts) == 1 else Path(path).stem
        targets.append((f"{prefix}_{name}.prototxt", text))
    for target, text in targets:
        atomic_write(target, text.encode())
        written.append(target)
    return written


def run(args) -> int:
    setup_logging(keep_early=True)  # the lines logged before the log file is known open it
    if args.snapshot and args.weights:
        raise SolverError("give --snapshot to resume training or --weights to fine-tune, but not both")
    variables = parse_assignments(args.set)
    param, solver_text = read_solver_param(args.solver, variables, set_fields=True)
    if args.level:
        param.train_state.level = args.level
    for stage in (s for s in args.stage.split(",") if s):
        param.train_state.stage.append(stage)
    prefix = param.snapshot_prefix
    # Caffe insists the snapshot folder exists; we create it, and still fail early if it cannot be written.
    try:
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    check_writable(prefix)
    log_file = f"{prefix}_train_{time.strftime('%Y%m%d-%H%M%S')}.log"
    setup_logging(log_file)
    # From here a failure ends the log file as glog's F line (the terminal gets run_guarded's one-line error).
    try:
        return _train(args, param, solver_text, variables, log_file)
    except PipelineError as exc:
        log_fatal(exc)
        raise
    except KeyboardInterrupt as exc:
        log_fatal(exc, "Interrupted (a second SIGINT): stopped at once, without a final snapshot")
        raise
    except Exception as exc:
        log_fatal(exc, f"{type(exc).__name__}: {exc}")
        raise


def _train(args, param, solver_text: str, variables: dict, log_file: str) -> int:
    log = get_logger()
    prefix = param.snapshot_prefix
    device = device_from_flag(args.gpu) if args.gpu is not None else None
    if device is not None:
        log.info("Use GPU with device ID %d", device.index or 0)
    solver = solver_class(param.type)(
        param, solver_path=args.solver, variables=variables, device=device, progress=args.progress
    )
    for path in save_rendered(prefix, solver_text, solver.net_texts):
        log.info("Rendered prototxt saved to %s", path)
    weights = [w for w in args.weights.split(",") if w]
    if args.weights_map and not weights:
        raise SolverError("--weights-map renames the layers of --weights files: give --weights too")
    for path in weights:
        log.info("Finetuning from %s", path)
    if weights:
        # Renamed per file; a file that fills no layer, or a rule that matches nothing, is an error.
        load_weights(solver, weights, parse_weights_map(args.weights_map))
    log.info("Starting Optimization")
    timer = PhaseTimer.attach(solver)
    with SignalActions(args.sigint_effect, args.sighup_effect) as actions:
        solver.action_request = actions
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
        solver.solve(args.snapshot or None)
    log.info("Optimization Done.")  # caffe.cpp's own, after the solver's
    print(f"log: {log_file}")
    report = report_for_solver(solver, log_file, solver_text, timer)
    if report is not None:
        print(f"report: {report}")
    if solver.last_snapshot:
        print(f"snapshot: {solver.last_snapshot}")
    for i, scores in enumerate(solver.test_scores):
        shown = ", ".join(f"{k} = {fmt(v)}" for k, v in scores.items() if k != "iter")
        print(f"test net #{i} at iteration {scores.get('iter')}: {shown}")
    return 0


# The registry reads `add_arguments` when the command is registered, so attach it first.
run.add_arguments = add_arguments
command("train", "train a net with a Caffe solver prototxt (Caffe's `caffe train`)")(run)
