"""What the verbs share: building a net from flags, loading weights, choosing the device."""

from __future__ import annotations

import torch

import pipeline.text.compose  # noqa: F401  (embed_net is a template function, not a variable, in template_variables)
from pipeline.errors import PipelineError
from pipeline.glog import get_logger
from pipeline.net import Net, build_net
from pipeline.text.template import check_variables_used, parse_assignments, template_variables
from pipeline.weights.io import copy_weights


def device_from_flag(gpu: str | None) -> torch.device:
    if gpu is None or gpu == "":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__} has no CUDA" if torch.version.cuda is None else "none found"
        raise PipelineError(
            f"--gpu {gpu} asked for, but no CUDA device is available here ({build}); leave out --gpu to run on the CPU"
        )
    try:
        index = 0 if gpu == "all" else int(gpu.split(",")[0])
    except ValueError:
        raise PipelineError(f"--gpu expects a device id (0, 1, ...) or 'all', got {gpu!r}") from None
    if not 0 <= index < torch.cuda.device_count():
        raise PipelineError(f"--gpu {gpu}: there are {torch.cuda.device_count()} CUDA device(s) (ids from 0)")
    return torch.device("cuda", index)


def load_net(args, phase: str) -> Net:
    """Build `--model` in `phase` (overridden by `--phase`), then copy every `--weights` file into it."""
    log = get_logger()
    stages = [s for s in args.stage.split(",") if s]
    variables = parse_assignments(args.set)
    # No solver here: a --set that the net template does not read is an error.
    check_variables_used(variables, template_variables(args.model), [args.model])
    net = build_net(args.model, args.phase or phase, variables, args.level, stages)
    for path in [w for w in args.weights.split(",") if w]:
        report = copy_weights(net, path)
        log.info("Copied %d layers from %s", len(report.copied), path)
        for name in report.ignored:
            log.info("Ignoring source layer %s", name)
        if not report.copied:
            raise PipelineError(f"{path}: no layer of this file matches a layer of {args.model}")
    return net.to(device_from_flag(args.gpu))


def format_float(value: float) -> str:
    """C++ `ostream << float`: 6 significant digits, as Caffe prints numbers."""
    return f"{value:.6g}"
