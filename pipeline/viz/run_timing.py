"""Where a training run's time went: seconds per phase (data, forward, backward, update, test) and per layer.

The Solver records no timings, so PhaseTimer wraps the methods of one solver *instance* (its train net's
forward and backward, its source layers, apply_update, test): the Solver class and every other solver are
untouched, and the cost is two clock reads per call. Per-layer milliseconds come from `caffe time`'s own
measurement (pipeline/net/timing.py), run for a few iterations on the trained net after training.

    timer = PhaseTimer.attach(solver)
    solver.solve()
    timings = {**timer.finish(), "layers": layer_timings(solver.net)}
"""

from __future__ import annotations

import functools
import time

import torch

from pipeline.net.timing import layer_times

PHASES = ("data", "forward", "backward", "update", "test", "other")


class PhaseTimer:
    def __init__(self, device: torch.device | None = None):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.iterations = 0
        self.started = time.perf_counter()
        self.wall_seconds: float | None = None
        self._cuda = device is not None and torch.device(device).type == "cuda"
        self._net = None
        self._result: dict | None = None

    @classmethod
    def attach(cls, solver) -> PhaseTimer:
        """Start timing `solver` (call just before solve())."""
        timer = cls(getattr(solver, "device", None))
        net = solver.net
        timer._net = net
        # Instance attributes shadow the class's methods; nn.Module.__call__ also looks `forward` up on the instance.
        net.forward = timer._timed("forward", net.forward)
        net.backward = timer._timed("backward", net.backward)
        for layer in net.layers:
            if getattr(layer, "is_source", False):
                layer.forward = timer._timed("data", layer.forward)
        solver.apply_update = timer._timed("update", solver.apply_update)
        solver.test = timer._timed("test", solver.test)
        solver.on_iteration.append(timer._count)
        return timer

    def _timed(self, phase: str, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if self._cuda:
                    torch.cuda.synchronize()
                self.seconds[phase] += time.perf_counter() - start

        return timed

    def _count(self, solver) -> None:
        self.iterations += 1

    def finish(self) -> dict:
        """The timings dict write_report takes; the first call stops the clock and fixes the numbers."""
        if self._result is None:
            self.wall_seconds = time.perf_counter() - self.started
            phases = dict(self.seconds)
            # Source layers run inside the net's forward: count their time as data, not forward.
            phases["forward"] = max(0.0, phases["forward"] - phases["data"])
            phases["other"] = max(0.0, self.wall_seconds - sum(v for k, v in phases.items() if k != "other"))
            self._result = {
                "wall_seconds": self.wall_seconds,
                "iterations": self.iterations,
                "phases": phases,
                "data_wait_seconds": data_wait_seconds(self._net),
            }
        return {**self._result, "phases": dict(self._result["phases"])}


def data_wait_seconds(net) -> float | None:
    """Seconds the trainer blocked on its data layers' prefetch queues (None: no prefetching layer)."""
    if net is None:
        return None
    waits = [layer.wait_seconds for layer in net.layers if isinstance(getattr(layer, "wait_seconds", None), float)]
    return sum(waits) if waits else None


def layer_timings(net, iterations: int = 3) -> list[dict]:
    """Mean forward and backward milliseconds of every layer of `net` over `iterations` passes (`caffe time`'s
    per-layer measurement; each pass reads one batch from the data layers). A layer that training runs without
    a backward (a frozen teacher, a layer no loss depends on) gets backward 0 and "backward": False."""
    if iterations <= 0:
        return []
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    forward = [0.0] * len(net.layers)
    backward = [0.0] * len(net.layers)
    was_training = net.training
    net.train()
    try:
        trained = _backward_layers(net)
        for _ in range(iterations):
            fwd, bwd = layer_times(net, device)
            forward = [a + b for a, b in zip(forward, fwd)]
            backward = [a + b for a, b in zip(backward, bwd)]
    finally:
        net.train(was_training)
        net.clear_param_diffs()
    return [
        {
            "name": layer.name,
            "type": layer.type_name or layer.param.type,
            "forward_ms": f / iterations,
            "backward_ms": b / iterations if has_backward else 0.0,
            "backward": has_backward,
        }
        for layer, f, b, has_backward in zip(net.layers, forward, backward, trained)
    ]


def _backward_layers(net) -> list[bool]:
    """One training forward and backward (also the warm-up): which layers' tops carry a gradient."""
    net.forward()
    if net.loss is not None and net.loss.requires_grad:
        net.backward()
    values = getattr(net, "_values", {})
    return [any(getattr(values.get(t), "requires_grad", False) for t in layer.top_names) for layer in net.layers]
