"""The training loop: Caffe's Solver (Init, Step, Solve, Test, Snapshot, Restore) with Caffe's log lines.

The update rule lives in subclasses (sgd.py and the modules built on it): `apply_update()` turns the gradients
left by the forward/backward passes into new weights, `history_arrays()`/`load_history()` move the solver's
history in and out of snapshots.

Numbers Caffe keeps as float (the loss, the smoothed loss, test scores) are kept as numpy float32 here and
updated with Caffe's float32 arithmetic, so the log prints the same digits.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

import pipeline.solvers.snapshot as snap
from pipeline.errors import SolverError
from pipeline.exact import caffe_blas
from pipeline.glog import get_logger
from pipeline.proto import caffe_pb2
from pipeline.solvers.diagnose import first_nonfinite
from pipeline.solvers.nets import build, collect_nets, read_solver_param
from pipeline.solvers.registry import solver_class
from pipeline.solvers.sharing import share_weights
from pipeline.weights.io import copy_weights

f32 = np.float32
NONE, SNAPSHOT, STOP = "none", "snapshot", "stop"


def fmt(value) -> str:
    """C++ `ostream << float`: 6 significant digits."""
    return f"{float(value):.6g}"


class Solver:
    type_name = ""

    def __init__(
        self,
        param: caffe_pb2.SolverParameter,
        solver_path: str | None = None,
        variables: dict | None = None,
        device: torch.device | str | None = None,
        progress: bool | None = None,
    ):
        self.log = get_logger()
        self.param = param
        self.solver_path = solver_path
        self.log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(param).rstrip("\n"))
        self._check_param()
        if self.will_snapshot():
            snap.check_writable(param.snapshot_prefix)
        self.seed = int(param.random_seed) if param.random_seed >= 0 else None
        if self.seed is not None:
            torch.manual_seed(self.seed)
            np.random.seed(self.seed % 2**32)
        self.device = torch.device(device) if device is not None else self._device_from_param()
        # Caffe's one generator, seeded before the train net and then the test nets fill their blobs from it.
        self.filler_rng = None
        if self.seed is not None and caffe_blas.is_on():
            from pipeline.exact.caffe_rng import CaffeRNG  # the exact mode's only: the default path never loads it

            self.filler_rng = CaffeRNG(self.seed)
        sources = collect_nets(param, solver_path, variables)
        self.net_texts = sources.texts
        self.net = self._build(sources.train[1], sources.train[0])
        self.test_nets = []
        for i, (desc, net_param) in enumerate(sources.tests):
            self.log.info("Creating test net (#%d) specified by %s", i, desc)
            self.test_nets.append(self._build(net_param, desc))
        self._share()
        for path in param.weights:
            self.load_weights(path)
        self.log.info("Solver scaffolding done.")
        self.iter = 0
        self.current_step = 0
        self.losses: list[np.float32] = []
        self.smoothed_loss = f32(0)
        self.last_loss = f32(0)
        self.requested_early_exit = False
        self.action_request: Callable[[], str] | None = None
        self.progress = progress
        self.last_snapshot: str | None = None
        self.test_scores: list[dict[str, float]] = []
        self.on_iteration: list[Callable[[Solver], None]] = []
        self._iterations_last = 0
        self.pre_solve()

    # ----- set-up ------------------------------------------------------------------------------------
    def _check_param(self) -> None:
        p = self.param
        if p.average_loss < 1:
            raise SolverError(f"average_loss must be >= 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"iter_size must be >= 1, got {p.iter_size}")
        if p.display < 0 or p.snapshot < 0 or p.max_iter < 0:
            raise SolverError("display, snapshot and max_iter must not be negative")
        if p.regularization_type not in ("L1", "L2"):
            raise SolverError(f"unknown regularization_type '{p.regularization_type}' (L1 or L2)")
        if p.test_iter and any(n <= 0 for n in p.test_iter):
            raise SolverError(f"test_iter must be positive, got {list(p.test_iter)}")

    def _device_from_param(self) -> torch.device:
        if self.param.solver_mode == caffe_pb2.SolverParameter.GPU:
            if not torch.cuda.is_available():
                self.log.warning("solver_mode is GPU but no CUDA device is available: running on the CPU")
                return torch.device("cpu")
            if self.param.device_id >= torch.cuda.device_count():
                raise SolverError(
                    f"solver_mode is GPU with device_id {self.param.device_id}, but there are only "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
            self.log.info("Use GPU with device ID %d", self.param.device_id)
            return torch.device("cuda", self.param.device_id)
        self.log.info("Use CPU.")
        return torch.device("cpu")

    def _build(self, net_param: caffe_pb2.NetParameter, source: str):
        net = build(net_param, self.seed, source, self.filler_rng).to(self.device)
        return net

    def will_snapshot(self) -> bool:
        return bool(self.param.snapshot) or self.param.snapshot_after_train

    def pre_solve(self) -> None:
        """Subclasses create their history here."""

    def load_weights(self, path: str | Path) -> None:
        """`--weights`: copy layers by name into the train net and every test net (Caffe's CopyLayers)."""
        for net in [self.net, *self.test_nets]:
            report = copy_weights(net, path)
            if net is self.net:
                self.log.info("Copied %d layers from %s", len(report.copied), path)
        self._share()

    def _share(self) -> None:
        for net in self.test_nets:
            share_weights(self.net, net)

    # ----- the loop ----------------------------------------------------------------------------------
    def requested_action(self) -> str:
        return self.action_request() if self.action_request is not None else NONE

    def solve(self, resume_file: str | Path | None = None) -> None:
        self.log.info("Solving %s", self.net.name)
        self.log.info("Learning Rate Policy: %s", self.param.lr_policy)
        self.requested_early_exit = False
        if resume_file is not None:
            self.log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(self.param.max_iter - self.iter)
        if self.param.snapshot_after_train and (not self.param.snapshot or self.iter % self.param.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            self.log.info("Optimization stopped early.")
            return
        if self.param.display and self.iter % self.param.display == 0:
            # Caffe's epilogue: one forward-only pass on the next batch, to show the loss after the last update.
            with torch.no_grad():
                self.net.forward()
            loss = self._loss_value(self.net)
            self._update_smoothed_loss(loss, start_iter)
            self.log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
        if self.param.test_interval and self.iter % self.param.test_interval == 0:
            self.test_all()
        self.log.info("Optimization Done.")

    def step(self, iters: int) -> None:
        from pipeline.solvers.progress import progress_bar

        start_iter, stop_iter = self.iter, self.iter + iters
        self.losses, self.smoothed_loss = [], f32(0)
        self._iterations_last = self.iter
        timer = time.perf_counter()
        p = self.param
        with progress_bar(self, start_iter, stop_iter) as bar:
            while self.iter < stop_iter:
                self.net.clear_param_diffs()
                if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                    self.test_all()
                    if self.requested_early_exit:
                        break
                display = bool(p.display) and self.iter % p.display == 0
                loss = f32(0)
                for _ in range(p.iter_size):
                    outputs, sub_loss = self.forward_backward()
                    loss = f32(loss + sub_loss)
                loss = f32(loss / f32(p.iter_size))
                self.last_loss = loss
                self._update_smoothed_loss(loss, start_iter)
                if display:
                    lapse = f32(time.perf_counter() - timer)
                    per_s = f32(f32(self.iter - self._iterations_last) / (lapse if lapse else f32(1)))
                    self.log.info(
                        "Iteration %d (%s iter/s, %ss/%d iters), loss = %s",
                        self.iter,
                        fmt(per_s),
                        fmt(lapse),
                        p.display,
                        fmt(self.smoothed_loss),
                    )
                    timer = time.perf_counter()
                    self._iterations_last = self.iter
                    self._log_outputs("Train", self.net, {k: v.detach().flatten() for k, v in outputs.items()})
                self.apply_update()
                self.iter += 1
                bar.update(self.smoothed_loss)
                for callback in self.on_iteration:
                    callback(self)
                request = self.requested_action()
                if (p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT:
                    self.snapshot()
                if request == STOP:
                    self.requested_early_exit = True
                    break

    def forward_backward(self, **feeds) -> tuple[dict[str, torch.Tensor], np.float32]:
        """Net::ForwardBackward: gradients accumulate into the parameters' .grad; a non-finite loss stops."""
        outputs = self.net.forward(**feeds)
        loss = self._loss_value(self.net)
        if not np.isfinite(loss):
            raise SolverError(f"Iteration {self.iter}: the loss is {fmt(loss)}; {first_nonfinite(self.net)}")
        if self.net.loss is not None and self.net.loss.requires_grad:
            self.net.backward()
        return outputs, loss

    def _loss_value(self, net) -> np.float32:
        return f32(net.loss.item()) if net.loss is not None else f32(0)

    def _update_smoothed_loss(self, loss: np.float32, start_iter: int) -> None:
        """Solver::UpdateSmoothedLoss in float32 (its running update drifts from the plain mean, as Caffe's)."""
        n = self.param.average_loss
        if len(self.losses) < n:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = f32(f32(self.smoothed_loss * f32(size - 1) + loss) / f32(size))
        else:
            idx = (self.iter - start_iter) % n
            self.smoothed_loss = f32(self.smoothed_loss + f32(f32(loss - self.losses[idx]) / f32(n)))
            self.losses[idx] = loss

    def _log_outputs(self, kind: str, net, values: dict[str, torch.Tensor]) -> list[tuple[str, float]]:
        """Caffe's "    Train net output #k: name = v (* w = w*v loss)" lines, outputs in Caffe's (sorted) order."""
        weights = output_loss_weights(net)
        index = 0
        scores = []
        for name in sorted(values):
            weight = f32(weights.get(name, 0.0))
            for value in values[name].tolist():
                value = f32(value)
                suffix = f" (* {fmt(weight)} = {fmt(f32(weight * value))} loss)" if weight else ""
                self.log.info("    %s net output #%d: %s = %s%s", kind, index, name, fmt(value), suffix)
                scores.append((name, float(value)))
                index += 1
        return scores

    # ----- testing -----------------------------------------------------------------------------------
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id: int = 0) -> dict[str, float] | None:
        """Solver::Test: mean of every output over test_iter batches, accumulated in float32 like Caffe."""
        self.log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        share_weights(self.net, net)
        n_iter = self.param.test_iter[test_net_id]
        sums: dict[str, np.ndarray] = {}
        loss = f32(0)
        was_training = net.training
        net.eval()
        with torch.no_grad():
            for i in range(n_iter):
                request = self.requested_action()
                while request != NONE:
                    if request == SNAPSHOT:
                        self.snapshot()
                    elif request == STOP:
                        self.requested_early_exit = True
                    request = self.requested_action()
                if self.requested_early_exit:
                    break
                outputs = net.forward()
                if self.param.test_compute_loss:
                    loss = f32(loss + self._loss_value(net))
                for name, value in outputs.items():
                    array = value.detach().to("cpu", torch.float32).numpy().ravel()
                    sums[name] = array.copy() if i == 0 else (sums[name] + array).astype(np.float32)
        net.train(was_training)
        if self.requested_early_exit:
            self.log.info("Test interrupted.")
            return None
        if self.param.test_compute_loss:
            self.log.info("Test loss: %s", fmt(f32(loss / f32(n_iter))))
        means = {name: torch.from_numpy((s / f32(n_iter)).astype(np.float32)) for name, s in sums.items()}
        scores = dict(self._log_outputs("Test", net, means))
        while len(self.test_scores) <= test_net_id:
            self.test_scores.append({})
        self.test_scores[test_net_id] = {"iter": self.iter, **scores}
        return scores

    # ----- the update (subclasses) -------------------------------------------------------------------
    def apply_update(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def history_arrays(self) -> list[np.ndarray]:
        return []

    def load_history(self, arrays: list[np.ndarray], origin: str) -> None:
        if arrays:
            raise SolverError(f"{origin}: has {len(arrays)} history blobs; solver type {self.type_name} keeps none")

    # ----- snapshots ---------------------------------------------------------------------------------
    def snapshot_filename(self, extension: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> str:
        """Write the weights and the solver state; returns the state file's name."""
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        if self.param.snapshot_diff:
            self.log.warning("snapshot_diff is not supported: snapshots hold the weights only")
        if hdf5:
            model = self.snapshot_filename(".caffemodel.h5")
            self.log.info("Snapshotting to HDF5 file %s", model)
            snap.write_caffemodel_h5(self.net, model)
        else:
            model = self.snapshot_filename(".caffemodel")
            self.log.info("Snapshotting to binary proto file %s", model)
            snap.write_caffemodel(self.net, model)
        state = snap.SolverStateData(self.iter, self.current_step, model, self.history_arrays())
        if hdf5:
            path = self.snapshot_filename(".solverstate.h5")
            self.log.info("Snapshotting solver state to HDF5 file %s", path)
            snap.write_solverstate_h5(path, state)
        else:
            path = self.snapshot_filename(".solverstate")
            self.log.info("Snapshotting solver state to binary proto file %s", path)
            snap.write_solverstate(path, state)
        self.last_snapshot = path
        return path

    def restore(self, state_file: str | Path) -> None:
        """Solver::Restore: iteration, learned weights, multistep position and history."""
        state = snap.read_solverstate(state_file)
        self.iter = state.iter
        if state.learned_net:
            copy_weights(self.net, snap.find_learned_net(state.learned_net, state_file))
            self._share()
        self.current_step = state.current_step
        self.load_history(state.history, str(state_file))


def build_solver(solver: str | Path | caffe_pb2.SolverParameter, variables: dict | None = None, **kwargs) -> Solver:
    """A solver of the type the SolverParameter names (from a prototxt path or a message)."""
    if isinstance(solver, caffe_pb2.SolverParameter):
        from pipeline.solvers.nets import upgrade_solver

        param, path = upgrade_solver(solver), kwargs.pop("solver_path", None)
    else:
        param, _ = read_solver_param(solver, variables)
        path = str(solver)
    return solver_class(param.type)(param, solver_path=path, variables=variables, **kwargs)


def output_loss_weights(net) -> dict[str, float]:
    """Caffe's blob_loss_weights for each blob: the weight the last layer writing it gave that top."""
    weights: dict[str, float] = {}
    for layer, layer_weights in zip(net.layers, net.loss_weights):
        for name, weight in zip(layer.top_names, layer_weights):
            weights[name] = weight
    return weights


def stderr_is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
