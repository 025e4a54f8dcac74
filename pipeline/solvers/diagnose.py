"""Finding where a non-finite loss came from: the first layer whose top holds NaN or inf.

Checking every top at every iteration would cost a reduction per blob, so the solver only looks when the loss
is already non-finite: it re-runs the same batch (the data tops of the failed forward are fed back) with a hook
on every layer that stops at the first non-finite top.
"""

from __future__ import annotations

import torch


class _Found(Exception):
    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


def _bad(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())


def _describe(layer, top: str) -> str:
    return f"top '{top}' of layer '{layer.name}' ({layer.type_name or layer.param.type})"


def first_nonfinite(net) -> str:
    """A sentence naming the first non-finite blob of the last forward pass, or saying none was found."""
    bad_params = [f"'{p.layer}' blob {p.index}" for p in net.learnable_params if _bad(p.tensor)]
    prefix = f"non-finite weights in layer {', '.join(bad_params)}; " if bad_params else ""
    feeds = {}
    for layer in net.layers:
        if not layer.is_source:
            continue
        for top in layer.top_names:
            try:
                value = net.blobs[top].data
            except KeyError:
                continue
            if _bad(value):
                return prefix + f"first non-finite value in {_describe(layer, top)} (the input data)"
            feeds[top] = value

    def hook(layer):
        def check(module, args, output):
            outputs = (output,) if isinstance(output, torch.Tensor) else tuple(output)
            for top, value in zip(layer.top_names, outputs):
                if _bad(value):
                    raise _Found(_describe(layer, top))

        return check

    handles = [layer.register_forward_hook(hook(layer)) for layer in net.layers if not layer.is_source]
    try:
        with torch.no_grad():
            net.forward(**feeds)
    except _Found as found:
        return prefix + f"first non-finite value in {found.where}"
    finally:
        for handle in handles:
            handle.remove()
    return prefix + "no layer top was non-finite when the batch was run again (the value came from the backward pass)"
