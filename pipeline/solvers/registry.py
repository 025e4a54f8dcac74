"""Solver registry: Caffe solver type name ("SGD", "Adam", ...) -> Solver class."""

from __future__ import annotations

from pipeline.errors import SolverError

_SOLVERS: dict[str, type] = {}


def register_solver(*type_names: str):
    """Class decorator: `@register_solver("SGD")`."""

    def decorate(cls):
        for name in type_names:
            if name in _SOLVERS:
                raise RuntimeError(f"solver type {name!r} registered twice ({_SOLVERS[name].__name__}, {cls.__name__})")
            _SOLVERS[name] = cls
        cls.type_name = type_names[0]
        return cls

    return decorate


def solver_class(type_name: str):
    try:
        return _SOLVERS[type_name]
    except KeyError:
        known = ", ".join(known_solvers())
        raise SolverError(f"unknown solver type '{type_name}'. Known types: {known}") from None


def known_solvers() -> list[str]:
    return sorted(_SOLVERS)
