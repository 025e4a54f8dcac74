"""The model zoo's solvers (solvers/*.prototxt): each renders and names an existing net, BVLC's keep BVLC's recipes,
and variables reach the solver."""

from __future__ import annotations

import pytest
from conftest import ROOT

from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import read_solver

SOLVERS = ROOT / "solvers"


# ----- solvers ------------------------------------------------------------------------------------------------------
BVLC_SOLVERS = {
    "lenet_solver": dict(
        net="prototxt/lenet.prototxt",
        base_lr=0.01,
        momentum=0.9,
        weight_decay=0.0005,
        lr_policy="inv",
        gamma=0.0001,
        power=0.75,
        display=100,
        max_iter=10000,
        snapshot=5000,
        test_iter=[100],
        test_interval=500,
        snapshot_prefix="runs/lenet/lenet",
    ),
    "cifar10_quick_solver": dict(
        net="prototxt/cifar10_quick.prototxt",
        base_lr=0.001,
        momentum=0.9,
        weight_decay=0.004,
        lr_policy="fixed",
        display=100,
        max_iter=4000,
        snapshot=4000,
        test_iter=[100],
        test_interval=500,
        snapshot_prefix="runs/cifar10_quick/cifar10_quick",
    ),
    "cifar10_full_solver": dict(
        net="prototxt/cifar10_full.prototxt",
        base_lr=0.001,
        momentum=0.9,
        weight_decay=0.004,
        lr_policy="fixed",
        display=200,
        max_iter=60000,
        snapshot=10000,
        test_iter=[100],
        test_interval=1000,
        snapshot_prefix="runs/cifar10_full/cifar10_full",
    ),
}


@pytest.mark.parametrize("path", sorted(SOLVERS.glob("*.prototxt")), ids=lambda p: p.stem)
def test_every_solver_renders_and_names_an_existing_net(path):
    solver = read_solver(path)
    nets = [solver.net, solver.train_net, *solver.test_net]
    assert any(nets) and all((ROOT / n).exists() for n in nets if n)


@pytest.mark.parametrize("name", BVLC_SOLVERS)
def test_solver_has_bvlcs_recipe(name):
    solver = read_solver(SOLVERS / f"{name}.prototxt")
    for key, value in BVLC_SOLVERS[name].items():
        got = list(getattr(solver, key)) if isinstance(value, list) else getattr(solver, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    assert (ROOT / solver.net).exists()
    assert solver.solver_mode == caffe_pb2.SolverParameter.CPU


def test_solver_variables():
    solver = read_solver(
        SOLVERS / "lenet_solver.prototxt", {"max_iter": 200, "base_lr": 0.1, "run": "runs/x", "solver_mode": "GPU"}
    )
    assert (solver.max_iter, solver.base_lr, solver.snapshot_prefix) == (200, pytest.approx(0.1), "runs/x/lenet")
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    full = read_solver(SOLVERS / "cifar10_full_solver.prototxt", {"snapshot_format": "HDF5"})
    assert full.snapshot_format == caffe_pb2.SolverParameter.HDF5
