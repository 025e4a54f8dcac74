"""`test`: score a model, as `caffe test --model --weights --iterations` does, with Caffe's output lines."""

from __future__ import annotations

import torch

from pipeline.cli import add_net_arguments, command
from pipeline.cli._common import format_float, load_net
from pipeline.glog import get_logger, setup_logging


def add_arguments(parser):
    add_net_arguments(parser)
    parser.add_argument("--iterations", type=int, default=50, help="number of batches to run")


@command("test", "score a model over --iterations batches (TEST phase by default)")
def run(args) -> int:
    setup_logging()
    log = get_logger()
    net = load_net(args, "TEST")
    net.eval()
    totals: dict[str, float] = {}
    loss_total = 0.0
    weights = {name: w for layer, ws in zip(net.layers, net.loss_weights) for name, w in zip(layer.top_names, ws)}
    with torch.no_grad():
        for batch in range(args.iterations):
            outputs = net()
            loss_total += float(net.loss) if net.loss is not None else 0.0
            for name, value in outputs.items():
                values = value.flatten().tolist()
                for k, v in enumerate(values):
                    key = name if len(values) == 1 else f"{name}[{k}]"
                    totals[key] = totals.get(key, 0.0) + v
                    log.info("Batch %d, %s = %s", batch, key, format_float(v))
    log.info("Loss: %s", format_float(loss_total / args.iterations))
    for key, total in totals.items():
        mean = total / args.iterations
        weight = weights.get(key.split("[")[0], 0.0)
        suffix = f" (* {format_float(weight)} = {format_float(weight * mean)} loss)" if weight else ""
        log.info("%s = %s%s", key, format_float(mean), suffix)
    return 0


run.add_arguments = add_arguments
