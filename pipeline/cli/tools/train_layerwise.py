"""Train a net layer at a time: `tools/train_layerwise.py --solver S --schedule F [--weights W]`.

The solver prototxt gives the net and every setting; the schedule (a prototxt of stages, see
pipeline/transfer/schema.py) says which layers learn in each stage, for how many iterations, at what rate, with
which temporary auxiliary head. Stage k starts from stage k-1's final snapshot. Run the same command again to
resume: finished stages are skipped, a stopped stage continues from its latest snapshot (`--restart` starts over).
Ctrl-C stops after the current iteration and writes a snapshot; SIGHUP writes one and goes on.

Exit status: 0 done, 1 a bad solver, schedule, net or weights (nothing trained), 3 stopped (resume later).
"""

import argparse
import sys
import time

from pipeline.cli import run_guarded
from pipeline.glog import get_logger, setup_logging


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", required=True, help="solver prototxt (may be a Jinja template)")
    parser.add_argument("--schedule", required=True, help="schedule prototxt: `stage { name train max_iter ... }`")
    parser.add_argument("--weights", default="", help="comma-separated caffemodels for the first stage (by name)")
    parser.add_argument(
        "--weights-map",
        action="append",
        default=[],
        metavar="FILE:old=new,...",
        help="a caffemodel for the first stage with layers renamed (e.g. a teacher: t.caffemodel:ip2=t_ip2)",
    )
    parser.add_argument(
        "--weights-prefix",
        action="append",
        default=[],
        metavar="FILE:PREFIX",
        help="a caffemodel for the first stage with every layer prefixed (a teacher embedded with prefix t_)",
    )
    parser.add_argument("--state", default=None, help="state file (default <snapshot_prefix>_layerwise.state)")
    parser.add_argument("--restart", action="store_true", help="ignore the state file and run every stage")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    parser.add_argument("--gpu", default=None, help="GPU id to train on; CPU when absent")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    return parser.parse_args(argv)


def run(args) -> int:
    from pipeline.cli._common import device_from_flag
    from pipeline.cli.train import SignalActions
    from pipeline.solvers import read_solver_param
    from pipeline.text.template import parse_assignments
    from pipeline.transfer.layerwise import LayerwiseRun
    from pipeline.transfer.schedule import read_schedule
    from pipeline.transfer.surgery import parse_map, read_weights

    setup_logging()
    log = get_logger()
    variables = parse_assignments(args.set)
    # --set: the solver's, its nets' and the schedule's template variables, else a solver field, else an error.
    param, _ = read_solver_param(args.solver, variables, set_fields=True, other_templates=[args.schedule])
    schedule = read_schedule(args.schedule, variables)
    weights = [w for w in args.weights.split(",") if w]
    for item in args.weights_map:
        path, _, mapping = item.partition(":")
        weights.append((path, parse_map(mapping)))
    for item in args.weights_prefix:
        path, _, prefix = item.rpartition(":")
        weights.append((path, {name: prefix + name for name in read_weights(path)}))
    device = device_from_flag(args.gpu) if args.gpu is not None else None
    job = LayerwiseRun(
        param, schedule, args.solver, variables, weights, args.state, device=device, progress=args.progress
    )
    if args.restart and job.state_file.exists():
        job.state_file.unlink()
    setup_logging(f"{job.prefix}_layerwise_{time.strftime('%Y%m%d-%H%M%S')}.log")
    for plan in job.plans:
        what = "all" if plan.trainable is None else ",".join(plan.trainable)
        log.info("Plan: stage '%s' trains [%s] for %d iterations", plan.name, what, plan.max_iter)
    with SignalActions("stop", "snapshot") as actions:
        job.action_request = actions
        result = job.run()
    return result.print_summary("stage ", show_state=True)


def main(argv=None) -> int:
    return run_guarded(run, parse_args(argv), "train_layerwise")


if __name__ == "__main__":
    sys.exit(main())
