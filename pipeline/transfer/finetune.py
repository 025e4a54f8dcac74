"""The fine-tuning recipe: chop off the head, freeze the body, train the new head, unfreeze, train the whole net.

A two-stage layer-at-a-time schedule over a net whose head was replaced (netedit.replace_head): stage "head" trains
only the new head at `head_lr`, stage "full" every layer at the lower `full_lr`, both from the source caffemodel's
weights (copied by name, so the renamed head starts from its filler).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.proto import caffe_pb2
from pipeline.solvers.nets import upgrade_solver
from pipeline.transfer.layerwise import NET_FIELDS
from pipeline.transfer.netedit import TransferError, replace_head
from pipeline.transfer.schema import Schedule


@dataclass
class Recipe:
    head_iters: int = 500
    head_lr: float = 0.01
    full_iters: int = 1000
    full_lr: float | None = None  # default head_lr / 10

    def check(self) -> None:
        if self.head_iters <= 0 or self.full_iters < 0:
            raise TransferError(f"iterations must be positive (head {self.head_iters}, full {self.full_iters})")
        if self.head_lr <= 0 or (self.full_lr is not None and self.full_lr <= 0):
            raise TransferError(f"learning rates must be positive (head {self.head_lr}, full {self.full_lr})")


def has_test_phase(net: caffe_pb2.NetParameter) -> bool:
    return any(rule.HasField("phase") and rule.phase == caffe_pb2.TEST for layer in net.layer for rule in layer.include)


def default_solver(prefix: str, test_iter: int = 0, seed: int = 1701) -> caffe_pb2.SolverParameter:
    """Caffe's fine-tuning defaults: SGD with momentum 0.9, weight decay 5e-4, a fixed rate."""
    param = caffe_pb2.SolverParameter(
        type="SGD",
        momentum=0.9,
        weight_decay=0.0005,
        lr_policy="fixed",
        display=50,
        snapshot_prefix=prefix,
        solver_mode=caffe_pb2.SolverParameter.CPU,
        random_seed=seed,
    )
    if test_iter:
        param.test_iter.append(test_iter)
    return param


def schedule(head: str, recipe: Recipe) -> Schedule:
    recipe.check()
    result = Schedule()
    stage = result.stage.add(name="head", max_iter=recipe.head_iters, base_lr=recipe.head_lr)
    stage.train.append(head)
    stage.solver.test_interval = recipe.head_iters
    if recipe.full_iters:
        full_lr = recipe.full_lr if recipe.full_lr is not None else recipe.head_lr / 10
        stage = result.stage.add(name="full", train_all=True, max_iter=recipe.full_iters, base_lr=full_lr)
        stage.solver.test_interval = recipe.full_iters
    return result


def prepare(
    net: caffe_pb2.NetParameter,
    head: str,
    num_classes: int,
    solver: caffe_pb2.SolverParameter,
    recipe: Recipe,
    new_name: str | None = None,
    bottom: str | None = None,
) -> tuple[caffe_pb2.SolverParameter, Schedule, str]:
    """The solver (its nets replaced by the re-headed net) and schedule of the recipe; returns the new head's name."""
    if num_classes <= 0:
        raise TransferError(f"--num-classes must be positive, got {num_classes}")
    new_name = new_name or f"{head}_new"
    edited = replace_head(net, head, num_classes, new_name, bottom)
    param = caffe_pb2.SolverParameter()
    param.CopyFrom(solver)
    for name in NET_FIELDS:
        param.ClearField(name)
    param.net_param.CopyFrom(edited)
    if not has_test_phase(edited):
        param.ClearField("test_iter")
    elif not param.test_iter:
        raise TransferError("the net has TEST-phase layers: give the number of test batches (--test-iter)")
    elif param.test_interval <= 0:
        param.test_interval = recipe.head_iters
    upgrade_solver(param)
    return param, schedule(new_name, recipe), new_name
