"""Sweeps: one solver template trained over a grid of variables (`run`), the runs compared (`table`).

Top of the library: may import solvers and viz; runs training as `python -m pipeline train` subprocesses.
"""
