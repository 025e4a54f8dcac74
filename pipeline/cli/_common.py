"""What the verbs share: building a net from flags, loading weights, choosing the device."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError
from pipeline.glog import get_logger
from pipeline.net import Net, build_net
from pipeline.template import parse_assignments
from pipeline.weights import copy_weights


def device_from_flag(gpu: str | None) -> torch.device:
    if gpu is None or gpu == "":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PipelineError(f"--gpu {gpu} asked for, but no CUDA device is available here")
    return torch.device("cuda", 0 if gpu == "all" else int(gpu.split(",")[0]))


def load_net(args, phase: str) -> Net:
    """Build `--model` in `phase` (overridden by `--phase`), then copy every `--weights` file into it."""
    log = get_logger()
    stages = [s for s in args.stage.split(",") if s]
    net = build_net(args.model, args.phase or phase, parse_assignments(args.set), args.level, stages)
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
