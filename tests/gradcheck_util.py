"""The shared numeric gradient checker: one layer, float64, torch.autograd.gradcheck over bottoms and blobs.

Usage in a test file:
    check_layer_gradients('type: "ReLU" relu_param { negative_slope: 0.1 }', {"x": (2, 3, 4)})
The snippet is the body of a `layer { ... }` without name/bottom/top: bottoms are the dict's keys, in
order, and tops are named top0, top1, ...
"""

from __future__ import annotations

import torch

from pipeline.net import Net
from pipeline.text.prototxt import net_from_string


def single_layer_net(body: str, bottoms: dict[str, tuple], n_tops: int = 1, phase: str = "TRAIN") -> Net:
    names = list(bottoms)
    shapes = "".join("shape { " + " ".join(f"dim: {d}" for d in s) + " } " for s in bottoms.values())
    tops = "".join(f'top: "{n}" ' for n in names)
    layer_bottoms = "".join(f'bottom: "{n}" ' for n in names)
    layer_tops = "".join(f'top: "top{i}" ' for i in range(n_tops))
    text = (
        f'layer {{ name: "input" type: "Input" {tops} input_param {{ {shapes} }} }}\n'
        f'layer {{ name: "under_test" {layer_bottoms} {layer_tops} {body} }}\n'
    )
    return Net(net_from_string(text), phase=phase, seed=1701).double()


def check_layer_gradients(
    body: str,
    bottoms: dict[str, tuple],
    n_tops: int = 1,
    phase: str = "TRAIN",
    inputs: dict[str, torch.Tensor] | None = None,
    wrt: list[str] | None = None,
    check_params: bool = True,
    seed: int = 0,
    **gradcheck_kwargs,
) -> None:
    """Assert that the layer's autograd gradients equal finite differences (w.r.t. `wrt` bottoms and blobs)."""
    net = single_layer_net(body, bottoms, n_tops, phase)
    layer = net.layer("under_test")
    generator = torch.Generator().manual_seed(seed)
    values = {name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in bottoms.items()}
    values.update({k: v.to(torch.float64) for k, v in (inputs or {}).items()})
    wrt = list(bottoms) if wrt is None else wrt
    leaves = [values[n].clone().requires_grad_(True) for n in wrt]
    params = [p for p in layer.blobs if isinstance(p, torch.nn.Parameter) and p.requires_grad] if check_params else []

    def run(*tensors):
        feed = dict(values)
        feed.update(zip(wrt, tensors[: len(wrt)]))
        outputs = [layer(*[feed[n] for n in bottoms])]
        outputs = outputs[0] if isinstance(outputs[0], tuple) else tuple(outputs)
        return tuple(o for o in outputs if o.is_floating_point())

    assert torch.autograd.gradcheck(run, (*leaves, *params), **gradcheck_kwargs)
