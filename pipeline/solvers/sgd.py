"""SGD with momentum, and the update pipeline every Caffe solver shares (SGDSolver::ApplyUpdate).

Per iteration: the rate from the lr policy; gradient clipping over all parameters (on the gradient summed over
iter_size, before normalising); then per parameter: divide by iter_size, add weight decay (L2: decay * w,
L1: decay * sign(w), decay = weight_decay * decay_mult), turn the gradient into the update with the rule's
history (`compute_update_value`, which uses local_rate = rate * lr_mult), and finally w -= update.

Each step is a float32 tensor operation in Caffe's order, so every rounding happens where Caffe's does:
Caffe's axpby (a*x + b*y) is a rounded product b*y and a fused multiply-add of a*x onto it, its axpy (the
weight decay) one fused multiply-add, as OpenBLAS computes them.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import SolverError
from pipeline.exact import caffe_blas
from pipeline.ops.caffe_math import caffe_axpby, caffe_sumsq
from pipeline.solvers.base import Solver, fmt
from pipeline.solvers.lr_policy import LrState, learning_rate
from pipeline.solvers.registry import register_solver

f32 = np.float32


@register_solver("SGD")
class SGDSolver(Solver):
    #: History blobs per learnable parameter (AdaDelta and Adam keep two).
    history_per_param = 1

    def pre_solve(self) -> None:
        # The lr_policy is not checked here: Caffe's SGDSolver::GetLearningRate rejects an unknown (or absent)
        # one only when it computes a rate, so a solver that never steps (max_iter 0, tests only) runs without.
        self.check_hyperparameters()
        self.params = self.net.learnable_params
        # Laid out like their parameters (Convolution keeps NHWC weights): the update's element-wise ops then
        # run on matching strides, the fast path.
        self.history = [torch.zeros_like(p.tensor) for _ in range(self.history_per_param) for p in self.params]
        # A frozen parameter (lr_mult 0, no decay) whose history is still zero keeps it zero under every rule:
        # skipping it saves the work of a frozen teacher net. A restored non-zero history clears the flag.
        self._pristine = [True] * len(self.params)
        self.rate = f32(0)

    def check_hyperparameters(self) -> None:
        """Constructor sanity checks of the rule (Caffe CHECKs them when the solver is built)."""

    # ----- ApplyUpdate -------------------------------------------------------------------------------
    def get_learning_rate(self) -> np.float32:
        state = LrState(self.iter, self.current_step)
        rate = learning_rate(self.param, state)
        self.current_step = state.current_step
        return rate

    def apply_update(self) -> None:
        rate = self.get_learning_rate()
        self.rate = rate
        if self.param.display and self.iter % self.param.display == 0:
            self.log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
        with torch.no_grad():
            diffs = [self._diff(p.tensor) for p in self.params]
            self.clip_gradients(diffs)
            for i, (p, diff) in enumerate(zip(self.params, diffs)):
                local_decay = f32(f32(self.param.weight_decay) * f32(p.decay_mult))
                if p.lr_mult == 0 and local_decay == 0 and self._pristine[i] and diff is None:
                    continue
                self._pristine[i] = False
                if diff is None:
                    diff = torch.zeros_like(p.tensor)
                diff = self.normalize(diff)
                diff = self.regularize(p.tensor, diff, local_decay)
                update = self.compute_update_value(i, diff, f32(rate * f32(p.lr_mult)))
                if not caffe_blas.axpy(-1.0, update, p.tensor.detach()):  # Caffe's Blob::Update
                    p.tensor.sub_(update)

    @staticmethod
    def _diff(tensor: torch.Tensor) -> torch.Tensor | None:
        return tensor.grad

    def clip_gradients(self, diffs: list[torch.Tensor | None]) -> None:
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = f32(0)
        for diff in diffs:
            if diff is not None:
                sumsq = f32(sumsq + f32(caffe_sumsq(diff)))
        l2norm = f32(np.sqrt(sumsq))
        if l2norm > clip:
            scale = f32(clip / l2norm)
            self.log.info(
                "Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                fmt(l2norm),
                fmt(clip),
                fmt(scale),
            )
            for diff in diffs:
                if diff is not None:
                    diff.mul_(float(scale))

    def normalize(self, diff: torch.Tensor) -> torch.Tensor:
        if self.param.iter_size == 1:
            return diff
        return diff.mul_(float(f32(1) / f32(self.param.iter_size)))

    def regularize(self, weight: torch.Tensor, diff: torch.Tensor, local_decay: np.float32) -> torch.Tensor:
        # Caffe adds the decay with caffe_axpy, i.e. BLAS saxpy, which OpenBLAS computes with a fused
        # multiply-add on x86-64 (the chaotic reference runs tell the two apart): torch's add with alpha
        # is fused as well (vec::fmadd; nvcc contracts it on CUDA).
        if not local_decay:
            return diff
        if self.param.regularization_type == "L2":
            if caffe_blas.axpy(float(local_decay), weight.detach(), diff):
                return diff
            return diff.add_(weight, alpha=float(local_decay))
        return diff.add_(torch.sign(weight), alpha=float(local_decay))

    def compute_update_value(self, i: int, diff: torch.Tensor, local_rate: np.float32) -> torch.Tensor:
        """history = momentum * history + local_rate * diff; the update is the history."""
        return caffe_axpby(float(local_rate), diff, float(f32(self.param.momentum)), self.history[i])

    # ----- history in snapshots ----------------------------------------------------------------------
    def history_arrays(self) -> list[np.ndarray]:
        return [h.detach().to("cpu", torch.float32).numpy().copy() for h in self.history]

    def load_history(self, arrays: list[np.ndarray], origin: str) -> None:
        if len(arrays) != len(self.history):
            raise SolverError(
                f"{origin}: incorrect length of history blobs: {len(arrays)} in the file, "
                f"{len(self.history)} expected by the {self.type_name} solver for this net"
            )
        self.log.info("%s: restoring history", type(self).__name__)
        for i, (target, array) in enumerate(zip(self.history, arrays)):
            if array.size != target.numel():
                raise SolverError(
                    f"{origin}: history blob {i} has {array.size} values, parameter "
                    f"{self._param_name(i)} has {target.numel()} {list(target.shape)}"
                )
            target.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(target.shape))
        for i in range(len(self.params)):
            self._pristine[i] = not any(
                bool(self.history[i + k * len(self.params)].any()) for k in range(self.history_per_param)
            )

    def _param_name(self, i: int) -> str:
        p = self.params[i % len(self.params)]
        return f"'{p.layer}' blob {p.index}"
