"""`time`: per-layer forward and backward milliseconds, as `caffe time` prints them.

The whole net's forward and backward are timed as a unit; each layer's backward is also timed on its own
(its tops' gradients through its own autograd graph), since autograd runs the net's backward as one pass.

Before the timed loop, one untimed forward and backward, as `caffe time` does ("Performing Forward", "Initial
loss", "Performing Backward": memory allocated, later iterations stable), plus one untimed pass of the per-layer
timing: torch's first calls pay one-time lazy initialisation (autograd engine, kernel selection), which would
otherwise be charged to the first layer's backward.
"""

from __future__ import annotations

import time

import torch

from pipeline.cli import add_net_arguments, command
from pipeline.cli._common import load_net
from pipeline.glog import get_logger, setup_logging
from pipeline.net.timing import layer_times, sync


def add_arguments(parser):
    add_net_arguments(parser)
    parser.add_argument("--iterations", type=int, default=50, help="number of timed iterations")


def _warm_up(net, device) -> None:
    """The untimed backward of the forward just run, then one untimed pass of the per-layer timing."""
    if net.loss is not None and net.loss.requires_grad:
        net.loss.backward()
        net.clear_param_diffs()
    sync(device)
    layer_times(net, device)


@command("time", "benchmark forward and backward, whole net and per layer (TRAIN phase by default)")
def run(args) -> int:
    setup_logging()
    log = get_logger()
    net = load_net(args, "TRAIN")
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    log.info("Performing Forward")
    net()
    log.info("Initial loss: %s", f"{float(net.loss.detach()):.6g}" if net.loss is not None else "0")
    log.info("Performing Backward")
    _warm_up(net, device)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    forward_total = backward_total = 0.0
    per_layer_fwd = [0.0] * len(net.layers)
    per_layer_bwd = [0.0] * len(net.layers)
    start_all = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        start = time.perf_counter()
        net()
        sync(device)
        middle = time.perf_counter()
        if net.loss is not None and net.loss.requires_grad:
            net.loss.backward()
            net.clear_param_diffs()
        sync(device)
        end = time.perf_counter()
        forward_total += (middle - start) * 1e3
        backward_total += (end - middle) * 1e3
        log.info("Iteration: %d forward-backward time: %.3g ms.", iteration, (end - start) * 1e3)
        fwd, bwd = layer_times(net, device)
        per_layer_fwd = [a + b for a, b in zip(per_layer_fwd, fwd)]
        per_layer_bwd = [a + b for a, b in zip(per_layer_bwd, bwd)]
    total_ms = (time.perf_counter() - start_all) * 1e3
    n = args.iterations
    log.info("Average time per layer: ")
    width = max(len(layer.name) for layer in net.layers)
    for layer, f, b in zip(net.layers, per_layer_fwd, per_layer_bwd):
        log.info("%*s\tforward: %.5g ms.", width, layer.name, f / n)
        log.info("%*s\tbackward: %.5g ms.", width, layer.name, b / n)
    log.info("Average Forward pass: %.5g ms.", forward_total / n)
    log.info("Average Backward pass: %.5g ms.", backward_total / n)
    log.info("Average Forward-Backward: %.5g ms.", (forward_total + backward_total) / n)
    log.info("Total Time: %.5g ms.", total_ms)
    log.info("*** Benchmark ends ***")
    return 0


run.add_arguments = add_arguments
