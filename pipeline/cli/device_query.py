"""`device_query`: what `caffe device_query` shows, for the devices torch sees."""

from __future__ import annotations

import os
import platform

import torch

from pipeline.cli import command
from pipeline.glog import get_logger, setup_logging


def add_arguments(parser):
    parser.add_argument("--gpu", default=None, help="GPU id to query ('all' for every one)")


@command("device_query", "show the CPU and the CUDA devices torch can use")
def run(args) -> int:
    setup_logging()
    log = get_logger()
    log.info("Torch version: %s", torch.__version__)
    log.info(
        "CPU: %s, %d cores, %d torch threads",
        platform.processor() or platform.machine(),
        os.cpu_count() or 0,
        torch.get_num_threads(),
    )
    if not torch.cuda.is_available():
        log.info("CUDA: not available (training runs on the CPU)")
        return 0
    ids = range(torch.cuda.device_count()) if args.gpu in (None, "all") else [int(g) for g in args.gpu.split(",")]
    for i in ids:
        p = torch.cuda.get_device_properties(i)
        log.info("Device id:                     %d", i)
        log.info("Name:                          %s", p.name)
        log.info("Major revision number:         %d", p.major)
        log.info("Minor revision number:         %d", p.minor)
        log.info("Total global memory:           %d", p.total_memory)
        log.info("Number of multiprocessors:     %d", p.multi_processor_count)
    return 0


run.add_arguments = add_arguments
