"""Fine-tune a trained net on a new task: replace its head, train the head, then the whole net at a lower rate.

    tools/finetune.py --model train_val.prototxt --weights src.caffemodel --replace-head ip2 --num-classes 5 \\
        --head-iters 500 --head-lr 0.01 --full-iters 1000 [--full-lr 0.001] [--prefix runs/ft/net]

The model's data layers point at the new task's data (template variables with --set). The head layer (an
InnerProduct or Convolution) becomes `<head>_new` with --num-classes outputs, reading the old head's bottom (or
--head-bottom) and writing its top; every other layer starts from --weights. Solver settings come from --solver
(its net is replaced) or Caffe's fine-tuning defaults (SGD, momentum 0.9, weight decay 5e-4, fixed rate). It runs
as a two-stage layer-wise schedule, so the same command resumes a stopped run.

Exit status: 0 done, 1 bad input (nothing trained), 3 stopped (run again to resume).
"""

import argparse
import sys
import time
from pathlib import Path

from pipeline.cli import run_guarded
from pipeline.glog import get_logger, setup_logging


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="train_val net prototxt (may be a Jinja template)")
    parser.add_argument("--weights", required=True, help="source caffemodel (.caffemodel, .caffemodel.h5)")
    parser.add_argument("--replace-head", required=True, metavar="LAYER", help="the head layer to replace")
    parser.add_argument("--num-classes", type=int, required=True, help="outputs of the new head")
    parser.add_argument("--head-bottom", default=None, help="blob the new head reads (default: the old head's)")
    parser.add_argument("--new-name", default=None, help="name of the new head layer (default <head>_new)")
    parser.add_argument("--solver", default=None, help="solver prototxt for the settings (its net is replaced)")
    parser.add_argument("--head-iters", type=int, default=500)
    parser.add_argument("--head-lr", type=float, default=0.01)
    parser.add_argument("--full-iters", type=int, default=1000, help="0: train the head only")
    parser.add_argument("--full-lr", type=float, default=None, help="default: head-lr / 10")
    parser.add_argument("--test-iter", type=int, default=None, help="test batches per evaluation")
    parser.add_argument("--prefix", default=None, help="snapshot prefix (default runs/finetune/<net name>)")
    parser.add_argument("--seed", type=int, default=1701, help="random seed (without --solver)")
    parser.add_argument("--restart", action="store_true", help="ignore the state file of an earlier run")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    parser.add_argument("--gpu", default=None, help="GPU id; CPU when absent")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return parser.parse_args(argv)


def run(args) -> int:
    from pipeline.cli._common import device_from_flag
    from pipeline.cli.train import SignalActions
    from pipeline.solvers import read_solver_param
    from pipeline.text.prototxt import read_net
    from pipeline.text.template import check_variables_used, parse_assignments, template_variables
    from pipeline.transfer import finetune
    from pipeline.transfer.layerwise import LayerwiseRun

    setup_logging()
    log = get_logger()
    variables = parse_assignments(args.set)
    net = read_net(args.model, variables)
    prefix = args.prefix or f"runs/finetune/{net.name or Path(args.model).stem}"
    if args.solver:
        # --set: the model's and the solver's template variables, else a solver field, else an error.
        solver, _ = read_solver_param(args.solver, variables, set_fields=True, other_templates=[args.model])
        if args.prefix:
            solver.snapshot_prefix = args.prefix
        if args.test_iter:
            solver.test_iter[:] = [args.test_iter]
    else:
        check_variables_used(variables, template_variables(args.model), [args.model])
        solver = finetune.default_solver(prefix, args.test_iter or 0, args.seed)
    Path(solver.snapshot_prefix).parent.mkdir(parents=True, exist_ok=True)
    recipe = finetune.Recipe(args.head_iters, args.head_lr, args.full_iters, args.full_lr)
    param, schedule, head = finetune.prepare(
        net, args.replace_head, args.num_classes, solver, recipe, args.new_name, args.head_bottom
    )
    device = device_from_flag(args.gpu) if args.gpu is not None else None
    job = LayerwiseRun(param, schedule, None, None, [args.weights], device=device, progress=args.progress)
    if args.restart and job.state_file.exists():
        job.state_file.unlink()
    setup_logging(f"{job.prefix}_finetune_{time.strftime('%Y%m%d-%H%M%S')}.log")
    log.info("Replaced head '%s' by '%s' with %d outputs", args.replace_head, head, args.num_classes)
    with SignalActions("stop", "snapshot") as actions:
        job.action_request = actions
        result = job.run()
    return result.print_summary("", show_state=False)


def main(argv=None) -> int:
    return run_guarded(run, parse_args(argv), "finetune")


if __name__ == "__main__":
    sys.exit(main())
