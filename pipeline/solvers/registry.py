"""Solver registry: Caffe solver type name ("SGD", "Adam", ...) -> Solver class."""

from __future__ import annotations

from pipeline.errors import SolverError
from pipeline.registry import Registry

SOLVERS: Registry[type] = Registry("solver type")


def register_solver(*type_names: str):
    """Class decorator: `@register_solver("SGD")`. A type registered twice is a programming error."""

    def decorate(cls):
        SOLVERS.register(*type_names)(cls)
        cls.type_name = type_names[0]
        return cls

    return decorate


def solver_class(type_name: str):
    if type_name not in SOLVERS:
        raise SolverError(f"unknown solver type '{type_name}'. Known types: {', '.join(known_solvers())}")
    return SOLVERS.get(type_name)


def known_solvers() -> list[str]:
    return SOLVERS.keys()
