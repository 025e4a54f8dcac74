"""Caffe's solvers: the training loop (base.Solver) and one module per update rule, each registering itself.

solver = build_solver("lenet_solver.prototxt")
solver.solve()
"""

import importlib
import pkgutil

from pipeline.solvers.base import Solver, build_solver, read_solver_param
from pipeline.solvers.registry import known_solvers, register_solver, solver_class
from pipeline.solvers.sharing import share_weights

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry", "sharing"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Solver",
    "build_solver",
    "known_solvers",
    "read_solver_param",
    "register_solver",
    "share_weights",
    "solver_class",
]
