"""A sweep's runs read back from their logs, and compared: one table (CSV, markdown) and one overlaid plot.

pipeline/sweep/run.py runs the grid; this module reads what each run left (its newest `*_train_*.log`) and writes
<out>/sweep.csv, sweep.md, sweep.png and sweep.svg.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError


@dataclass
class Run:
    values: dict[str, str]
    name: str
    folder: Path
    status: str = "not run"
    returncode: int | None = None
    seconds: float = math.nan
    log_file: Path | None = None
    iterations: int | None = None
    tested_at: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


@dataclass
class SweepResult:
    runs: list[Run]
    csv: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status != "ok"]


# ----- reading the runs ------------------------------------------------------------------------------
def newest_log(folder: Path) -> Path | None:
    logs = sorted(folder.glob("*_train_*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def read_results(run: Run):
    """From the run's log: the last test outputs (of the last segment) and the iteration they were tested at,
    the last smoothed train loss, the last iteration and the training seconds. Returns the ParsedLog or None."""
    from pipeline.viz.parse_log import parse_log

    if run.log_file is None or not run.log_file.exists():
        return None
    try:
        log = parse_log(run.log_file)
    except PipelineError as exc:
        run.error = run.error or str(exc)
        return None
    last_segment = max((row.get("Segment", 0) for row in log.test.rows + log.train.rows), default=0)
    tests = [row for row in log.test.rows if row.get("Segment", 0) == last_segment]
    if tests:
        final = max(tests, key=lambda row: row["NumIters"])
        run.iterations = run.tested_at = int(final["NumIters"])
        for output in log.test_outputs:
            if output.column in final:
                run.metrics[output.column] = final[output.column]
    trains = [row for row in log.train.rows if row.get("Segment", 0) == last_segment and "SmoothedLoss" in row]
    if trains:
        final = max(trains, key=lambda row: row["NumIters"])
        run.metrics["train SmoothedLoss"] = final["SmoothedLoss"]
        run.iterations = max(run.iterations or 0, int(final["NumIters"]))
    rows = [r for r in log.train.rows + log.test.rows if r.get("Segment", 0) == last_segment]
    seconds = [r["Seconds"] for r in rows if math.isfinite(r.get("Seconds", math.nan))]
    if seconds:
        run.seconds = max(seconds)  # training time as the log counts it, from its "Solving" line
    return log


def collect(run: Run) -> None:
    """A run trained earlier: its newest log gives its status, results and seconds."""
    run.log_file = newest_log(run.folder) if run.folder.is_dir() else None
    log = read_results(run)
    if log is None:
        run.status = "no log" if run.log_file is None else "unreadable log"
    else:
        run.status = "ok" if log.finished else "unfinished"


# ----- the comparison ----------------------------------------------------------------------------------
def _metric_columns(runs: list[Run]) -> list[str]:
    columns = list(dict.fromkeys(c for run in runs for c in run.metrics if c != "train SmoothedLoss"))
    if any("train SmoothedLoss" in run.metrics for run in runs):
        columns.append("train SmoothedLoss")
    return columns


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def comparison_rows(runs: list[Run], variables: list[str]) -> tuple[list[str], list[list[str]]]:
    metrics = _metric_columns(runs)
    header = [*variables, "status", "iterations", "tested at", *metrics, "seconds", "folder"]
    rows = []
    for run in runs:
        cells = [run.values[v] for v in variables] + [run.status, _cell(run.iterations), _cell(run.tested_at)]
        cells += [_cell(run.metrics.get(m)) for m in metrics]
        rows.append(cells + [_seconds(run.seconds), str(run.folder)])
    return header, rows


def write_tables(runs: list[Run], variables: list[str], out: Path) -> tuple[Path, Path]:
    header, rows = comparison_rows(runs, variables)
    csv_path, md_path = out / "sweep.csv", out / "sweep.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    errors = [f"- {run.name}: {run.error}" for run in runs if run.error]
    md_path.write_text("\n".join(lines + ([""] + errors if errors else [])) + "\n")
    return csv_path, md_path


def plot_runs(
    runs: list[Run], out: Path, phases=("train", "test"), only=None, title: str | None = None
) -> tuple[list[Path], list[str]]:
    """Every run's curves overlaid (one colour per combination) in sweep.png and sweep.svg."""
    from pipeline.viz.parse_log import parse_log
    from pipeline.viz.plot import plot_logs

    logs, labels = [], []
    for run in runs:
        if run.log_file is not None and run.log_file.exists():
            try:
                logs.append(parse_log(run.log_file))
            except PipelineError:
                continue
            labels.append(run.label)
    if not logs:
        return [], ["no run left a log to plot"]
    kinds = ["loss"]
    if any(o.kind == "accuracy" for log in logs for o in log.train_outputs + log.test_outputs):
        kinds.append("accuracy")
    result = plot_logs(
        logs,
        [out / "sweep.png", out / "sweep.svg"],
        labels=labels,
        kinds=kinds,
        phases=phases,
        only=only,
        title=title or f"sweep: {out.name}",
    )
    return result.files, result.warnings
