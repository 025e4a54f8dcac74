"""Per-layer forward and backward milliseconds of a net, as `caffe time` measures them (pipeline/cli/time.py prints
them; pipeline/viz/run_timing.py reports them for a training run).

The whole net's backward is one autograd pass, so each layer's backward is timed on its own: its tops'
gradients through its own autograd graph.
"""

from __future__ import annotations

import time

import torch


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock read after it times that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_times(net, device) -> tuple[list[float], list[float]]:
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
            sync(device)
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
            sync(device)
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
    sync(device)
    return (time.perf_counter() - start) * 1e3
