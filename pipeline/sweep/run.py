"""Sweeps: one solver template trained over the product of variable values, compared in one table and one plot.

    tools/sweep.py --solver solvers/lenet_solver.prototxt --set net=prototxt/teacher_student.prototxt \\
        --grid temperature=1,2,4 --grid alpha=0.5,0.9 --jobs 2 --out runs/sweep_kd

Each combination is one `python -m pipeline train --solver S --set k=v ... --set run=<out>/<name>` in its own
process and folder (the solver's snapshot folder variable, `run` in solvers/*.prototxt, keeps the runs' logs and
snapshots apart), run in sequence or N at a time (the CPU threads split between them). Afterwards:
<out>/sweep.csv and sweep.md (final test outputs, train loss, iterations and seconds per combination) and
<out>/sweep.png / .svg (every run's curves overlaid). A failed run is a row with its status; the others go on.
"seconds" is training time as each run's log counts it (from its "Solving" line; the process's wall time when
the run left no log). `--no-train` re-makes the table and plot from the runs already in <out>.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.sweep.table import Run, SweepResult, collect, newest_log, plot_runs, read_results, write_tables

ROOT = Path(__file__).resolve().parents[2]
SENTINEL = "__sweep_run_dir__"


class SweepError(PipelineError):
    """A sweep that cannot start: a bad grid, or a solver whose runs would overwrite each other."""


# ----- the grid ----------------------------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """`1,2,4` -> ["1", "2", "4"]; commas inside brackets or quotes stay (`[800,800],[100]`)."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["temperature=1,2,4", "alpha=0.5,0.9"]` to {name: values}, in the order given."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise SweepError(f"--grid expects name=v1,v2,..., got {item!r}")
        values = split_values(text)
        if any(v == "" for v in values):
            raise SweepError(f"--grid {item!r}: an empty value")
        if name in grid:
            raise SweepError(f"--grid {name} is given twice")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid {item!r}: a value is repeated")
        grid[name] = values
    if not grid:
        raise SweepError("give at least one --grid name=v1,v2,...")
    return grid


def run_name(values: dict[str, str]) -> str:
    """A folder name for one combination: `temperature-1_alpha-0.5`."""
    parts = [f"{k}-{v}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "", "_".join(parts).replace(" ", "")) or "run"


def plan(grid: dict[str, list[str]], out: Path) -> list[Run]:
    runs, names = [], set()
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        name = run_name(values)
        while name in names:  # values that differ only in characters a folder name drops
            name += "_"
        names.add(name)
        runs.append(Run(values, name, out / name))
    return runs


def check_solver(solver: str, grid: dict[str, list[str]], fixed: dict[str, str], run_var: str) -> list[str]:
    """Render the solver (and its nets) as the runs will: it must put its snapshots under `run_var`; a variable
    that no template reads and that names no SolverParameter field is an error (as in train); a grid variable
    that changes neither the solver nor its nets is reported."""
    from pipeline.errors import TemplateError
    from pipeline.solvers.nets import collect_nets, read_solver_param
    from pipeline.text.template import parse_assignments

    def render(values: dict[str, str], run_dir: str, set_fields: bool = True):
        assignments = [f"{k}={v}" for k, v in {**fixed, **values}.items()] + [f"{run_var}={run_dir}"]
        variables = parse_assignments(assignments)
        try:
            param, text = read_solver_param(solver, variables, set_fields=set_fields)
        except TemplateError as exc:
            if str(exc).startswith("unused --set"):  # grid variables reach train as --set too
                raise SweepError(f"{exc}; --grid and --set variables are passed to each run as --set") from None
            raise
        return param, text, collect_nets(param, solver, variables).texts

    first = {name: values[0] for name, values in grid.items()}
    param, _, _ = render(first, SENTINEL, set_fields=False)
    if SENTINEL not in param.snapshot_prefix:
        raise SweepError(
            f"{solver}: its snapshot_prefix '{param.snapshot_prefix}' does not use the variable '{run_var}', so "
            f"the runs would write over each other's snapshots and logs; name the solver's snapshot folder "
            f"variable with --run-var"
        )
    warnings = []
    _, base_text, base_nets = render(first, "x")
    for name, values in grid.items():
        if len(values) > 1:
            _, text, nets = render({**first, name: values[1]}, "x")
            if text == base_text and nets == base_nets:
                warnings.append(
                    f"--grid {name}: {name}={values[0]} and {name}={values[1]} give the same solver and nets"
                )
    return warnings


# ----- running -----------------------------------------------------------------------------------------
def train_command(solver: str, run: Run, fixed: dict[str, str], run_var: str, train_args) -> list[str]:
    command = [sys.executable, "-m", "pipeline", "train", "--solver", solver, "--no-progress"]
    for name, value in {**fixed, **run.values}.items():
        command += ["--set", f"{name}={value}"]
    return command + ["--set", f"{run_var}={run.folder}", *train_args]


def _environment(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))  # N runs share the cores
    return env


def _train(run: Run, command: list[str], env: dict[str, str], echo, live: set, lock) -> Run:
    run.folder.mkdir(parents=True, exist_ok=True)
    echo(f"[sweep] {run.name}: start")
    start = time.perf_counter()
    with open(run.folder / "train.out", "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        with lock:
            live.add(process)
        try:
            run.returncode = process.wait()
        finally:
            with lock:
                live.discard(process)
    run.seconds = wall = time.perf_counter() - start  # the log's own count replaces it when there is one
    text = (run.folder / "train.out").read_text(errors="replace")
    found = re.findall(r"^log: (.+)$", text, flags=re.M)
    run.log_file = Path(found[-1]) if found else newest_log(run.folder)
    if run.returncode == 0:
        run.status = "ok"
    else:
        run.status = f"failed (exit {run.returncode})"
        lines = [line for line in text.splitlines() if line.strip()]
        run.error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
    read_results(run)
    echo(f"[sweep] {run.name}: {run.status} in {wall:.1f} s" + (f": {run.error}" if run.error else ""))
    return run


def _run_all(runs: list[Run], commands: list[list[str]], jobs: int, echo) -> None:
    env, live, lock = _environment(jobs), set(), threading.Lock()
    pool, futures = ThreadPoolExecutor(max_workers=jobs), []
    try:
        futures = [pool.submit(_train, run, cmd, env, echo, live, lock) for run, cmd in zip(runs, commands)]
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        # Ctrl-C reached the runs too (one process group): each stops after its iteration with a snapshot.
        echo("[sweep] interrupted: no new runs; waiting for the running ones to stop")
        for future in futures:
            future.cancel()
        with lock:
            running = list(live)
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.terminate()
        raise
    finally:
        pool.shutdown(wait=True)


def run_sweep(
    solver: str,
    grid: dict[str, list[str]],
    out: str | Path,
    *,
    jobs: int = 1,
    fixed: dict[str, str] | None = None,
    run_var: str = "run",
    train_args=(),
    echo=print,
    plot_phases=("train", "test"),
    plot_outputs: list[str] | None = None,
    title: str | None = None,
    train: bool = True,
) -> SweepResult:
    """Train every combination of `grid` (values as `--set` takes them), then write the table and plot.
    train=False: only tabulate and plot the runs already in `out` (from their newest logs)."""
    if jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {jobs}")
    fixed = dict(fixed or {})
    clash = sorted(set(fixed) & set(grid) | ({run_var} & (set(fixed) | set(grid))))
    if clash:
        raise SweepError(f"variables given twice (--set, --grid or the run folder variable): {', '.join(clash)}")
    out = Path(out)
    runs = plan(grid, out)
    out.mkdir(parents=True, exist_ok=True)
    if not train:
        for run in runs:
            collect(run)
        warnings = []
    else:
        warnings = check_solver(solver, grid, fixed, run_var)
        for warning in warnings:
            echo(f"[sweep] warning: {warning}")
        echo(f"[sweep] {len(runs)} runs of {solver} into {out}, {jobs} at a time")
        commands = [train_command(solver, run, fixed, run_var, list(train_args)) for run in runs]
        _run_all(runs, commands, jobs, echo)
    result = SweepResult(runs, *write_tables(runs, list(grid), out), warnings=warnings)
    result.plots, plot_warnings = plot_runs(runs, out, plot_phases, plot_outputs, title)
    result.warnings += plot_warnings
    return result


# ----- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """tools/sweep.py: exit 0 all runs trained, 1 some failed, 2 the sweep could not start."""
    import argparse

    from pipeline.text.template import parse_assignments

    parser = argparse.ArgumentParser(
        prog="sweep.py", description="Train one solver template over a grid of variables; compare the runs."
    )
    parser.add_argument("--solver", required=True, help="solver prototxt (a Jinja template)")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...", help="a swept variable")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a fixed variable")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1: in sequence)")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/sweep_<solver name>)")
    parser.add_argument("--run-var", default="run", help="the solver's snapshot folder variable (default run)")
    parser.add_argument("--weights", default="", help="passed to every run's train (--weights)")
    parser.add_argument("--phase", choices=["train", "test", "both"], default="both", help="curves in the plot")
    parser.add_argument("--outputs", default=None, help="only these net outputs in the plot (comma-separated)")
    parser.add_argument("--title", default=None, help="the plot's title (default: sweep: <out folder name>)")
    parser.add_argument("--no-train", dest="train", action="store_false", help="only tabulate and plot earlier runs")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if not exc.code else 2
    out = args.out or f"runs/sweep_{Path(args.solver).stem}"
    train_args = ["--weights", args.weights] if args.weights else []
    try:
        fixed = {}
        for item in args.set:
            parse_assignments([item])  # the same check train makes, before any run starts
            name, _, value = item.partition("=")
            fixed[name.strip()] = value.strip()
        result = run_sweep(
            args.solver,
            parse_grid(args.grid),
            out,
            jobs=args.jobs,
            fixed=fixed,
            run_var=args.run_var,
            train_args=train_args,
            plot_phases=("train", "test") if args.phase == "both" else (args.phase,),
            plot_outputs=args.outputs.split(",") if args.outputs else None,
            title=args.title,
            train=args.train,
        )
    except PipelineError as exc:
        print(f"sweep.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for warning in result.warnings:
        print(f"sweep.py: warning: {warning}", file=sys.stderr)
    print(result.markdown.read_text(), end="")
    for path in [result.csv, result.markdown, *result.plots]:
        print(f"Wrote {path}")
    return 1 if result.failed else 0
