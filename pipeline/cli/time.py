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


def add_arguments(parser):
    add_net_arguments(parser)
    parser.add_argument("--iterations", type=int, default=50, help="number of timed iterations")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _layer_times(net, device) -> tuple[list[float], list[float]]:
    """One forward of the net, layer by layer, timing each layer's forward and its own backward."""
    forward_ms, backward_ms = [], []
    values = {}
    # Like Caffe's bottom_need_backward: a blob carries a gradient only if a learnable parameter lies upstream
    # (or force_backward), so e.g. a Dropout on the data times no backward, as in training.
    needs_grad: dict[str, bool] = {}
    for i, layer in enumerate(net.layers):
        if layer.is_source:
            start = time.perf_counter()
            tops = net._source_tops(layer, {}, False)
            _sync(device)
            forward_ms.append((time.perf_counter() - start) * 1e3)
            backward_ms.append(0.0)
            needs_grad.update(dict.fromkeys(layer.top_names, net.force_backward))
        else:
            flows = [needs_grad[b] and not d for b, d in zip(layer.bottom_names, net.detach_bottoms[i])]
            learns = any(p.requires_grad for p in layer.parameters())
            needs_grad.update(dict.fromkeys(layer.top_names, any(flows) or learns))
            bottoms = [
                values[b].detach().requires_grad_(flow and values[b].is_floating_point())
                for b, flow in zip(layer.bottom_names, flows)
            ]
            start = time.perf_counter()
            tops = net._run(layer, bottoms, i)
            _sync(device)
            forward_ms.append((time.perf_counter() - start) * 1e3)
            backward_ms.append(_backward_ms(tops, bottoms, layer, device))
        values.update(zip(layer.top_names, tops))
    return forward_ms, backward_ms


def _backward_ms(tops, bottoms, layer, device) -> float:
    outputs = [t for t in tops if t.requires_grad]
    inputs = [b for b in bottoms if b.requires_grad] + [p for p in layer.parameters() if p.requires_grad]
    if not outputs or not inputs:
        return 0.0
    grads = [torch.ones_like(t) for t in outputs]
    start = time.perf_counter()
    torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _warm_up(net, device) -> None:
    """The untimed backward of the forward just run, then one untimed pass of the per-layer timing."""
    if net.loss is not None and net.loss.requires_grad:
        net.loss.backward()
        net.clear_param_diffs()
    _sync(device)
    _layer_times(net, device)


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
        _sync(device)
        middle = time.perf_counter()
        if net.loss is not None and net.loss.requires_grad:
            net.loss.backward()
            net.clear_param_diffs()
        _sync(device)
        end = time.perf_counter()
        forward_total += (middle - start) * 1e3
        backward_total += (end - middle) * 1e3
        log.info("Iteration: %d forward-backward time: %.3g ms.", iteration, (end - start) * 1e3)
        fwd, bwd = _layer_times(net, device)
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
