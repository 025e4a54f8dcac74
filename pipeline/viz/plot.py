"""Training curves from parsed logs: loss, accuracy and learning rate against iterations or seconds (matplotlib).

One panel per kind, one colour per run when several runs are overlaid (per output when there is one run);
train series are solid lines, test series dashed with markers, so the two phases read apart in colour and in
black and white. A resumed run (several segments) is drawn as broken pieces, and on the seconds axis its
segments are laid end to end. Drawn with matplotlib's object API (Figure, Agg canvas; no pyplot), so it runs
headless and leaves an interactive session's backend alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.extras import require
from pipeline.viz.logtable import ParsedLog, Table

KINDS = ("loss", "accuracy", "lr")
FORMATS = ("png", "svg", "pdf")
TRAIN_STYLES = ("-", ":", "-.", (0, (5, 1)))
TEST_MARKERS = ("o", "s", "^", "D", "v")
YLABELS = {"loss": "loss", "accuracy": "accuracy", "lr": "learning rate"}


@dataclass
class Series:
    run: int
    label: str
    phase: str
    column: str
    kind: str
    x: list[float]
    y: list[float]


@dataclass
class PlotResult:
    files: list[Path] = field(default_factory=list)
    series: int = 0
    warnings: list[str] = field(default_factory=list)


def unique_labels(sources: list[str]) -> list[str]:
    """File names as legend labels, with as many parent folders as it takes to tell them apart."""
    paths = [Path(s) for s in sources]
    for depth in range(1, max((len(p.parts) for p in paths), default=1) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({i + 1})" for i, label in enumerate(sources)]


def segment_offsets(log: ParsedLog) -> dict[int, float]:
    """Seconds to add to each segment so that resumed segments follow one another on a time axis."""
    longest: dict[int, float] = {}
    for table in (log.train, log.test):
        for row in table.rows:
            seconds = row.get("Seconds", math.nan)
            if math.isfinite(seconds):
                segment = int(row.get("Segment", 0))
                longest[segment] = max(longest.get(segment, 0.0), seconds)
    offsets, total = {}, 0.0
    for segment in sorted(longest):
        offsets[segment] = total
        total += longest[segment]
    return offsets


def _points(table: Table, column: str, x: str, offsets: dict[int, float]) -> tuple[list[float], list[float]]:
    """Finite points of one column, with a NaN gap where a segment ends (so lines break there)."""
    xs, ys, last_segment = [], [], None
    for row in table.rows:
        value = row.get(column)
        if value is None or not math.isfinite(value):
            continue
        segment = int(row.get("Segment", 0))
        where = row["NumIters"] if x == "iters" else row["Seconds"] + offsets.get(segment, 0.0)
        if last_segment is not None and segment != last_segment:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(float(where))
        ys.append(float(value))
        last_segment = segment
    return xs, ys


def collect_series(log: ParsedLog, run: int, label: str, kinds, phases, x: str, only=None) -> list[Series]:
    offsets = segment_offsets(log)
    found = []
    for phase in phases:
        table = log.table(phase)
        columns = [(o.column, o.kind) for o in log.outputs(phase)]
        if phase == "train" and not any(k == "loss" for _, k in columns) and "SmoothedLoss" in table.columns:
            columns.append(("SmoothedLoss", "loss"))  # logs without "Train net output" lines
        for column, kind in columns:
            if kind in kinds and (only is None or column in only or column.split("#")[0] in only):
                found.append(Series(run, label, phase, column, kind, *_points(table, column, x, offsets)))
    if "lr" in kinds:
        for phase in ("train", "test"):
            xs, ys = _points(log.table(phase), "LearningRate", x, offsets)
            if any(math.isfinite(v) for v in ys):
                found.append(Series(run, label, "train", "LearningRate", "lr", xs, ys))
                break
    return [s for s in found if any(math.isfinite(v) for v in s.y)]


def _normalised(series: Series) -> Series:
    first = next((v for v in series.y if math.isfinite(v) and v != 0), None)
    if first is None:
        return series
    return Series(series.run, series.label, series.phase, series.column, series.kind, series.x,
                  [v / first for v in series.y])  # fmt: skip


def plot_logs(
    logs,
    files,
    *,
    labels: list[str] | None = None,
    x: str = "iters",
    kinds=KINDS,
    normalise: bool = False,
    phases=("train", "test"),
    only: list[str] | None = None,
    title: str | None = None,
    logy: bool = False,
) -> PlotResult:
    """Draw `logs` (paths or ParsedLog) into each of `files` (.png/.svg/.pdf; one path or a list).
    `only`: net outputs to draw (column or output names); `phases`: "train" and/or "test"."""
    from pipeline.viz.parse_log import parse_log

    files = [files] if isinstance(files, (str, Path)) else list(files)
    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown plot kind {kind!r}: choose from {', '.join(KINDS)}")
    if x not in ("iters", "seconds"):
        raise ValueError(f"x must be 'iters' or 'seconds', not {x!r}")
    for path in files:
        if Path(path).suffix.lstrip(".").lower() not in FORMATS:
            raise ValueError(f"{path}: the image format comes from the suffix: one of {', '.join(FORMATS)}")
    parsed = [log if isinstance(log, ParsedLog) else parse_log(log) for log in logs]
    if labels is not None and len(labels) != len(parsed):
        raise ValueError(f"{len(labels)} labels for {len(parsed)} logs")
    labels = list(labels) if labels is not None else unique_labels([p.source for p in parsed])
    result = PlotResult()
    series: list[Series] = []
    for run, (log, label) in enumerate(zip(parsed, labels)):
        result.warnings.extend(log.warnings)
        found = collect_series(log, run, label, kinds, phases, x, only)
        if not found:
            result.warnings.append(f"{label}: nothing to plot ({', '.join(kinds)})")
        series.extend(_normalised(s) if normalise and s.kind == "loss" else s for s in found)
    result.series = len(series)
    figure = _draw(series, kinds, len(parsed), x, normalise, title, logy)
    for path in files:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format=path.suffix.lstrip(".").lower(), dpi=110, bbox_inches="tight")
        result.files.append(path)
    return result


def _style(s: Series, ordinal: int, colour) -> dict:
    if s.phase == "test":
        marker = TEST_MARKERS[ordinal % len(TEST_MARKERS)]
        return {"color": colour, "linestyle": "--", "marker": marker, "markersize": 4, "linewidth": 1.2}
    return {"color": colour, "linestyle": TRAIN_STYLES[ordinal % len(TRAIN_STYLES)], "linewidth": 1.0, "alpha": 0.9}


def _palette(n: int) -> list:
    colormaps = require("matplotlib", "plot", "plotting").colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors)
    if n <= 20:
        return list(colormaps["tab20"].colors)
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _legend(ax, series: list[Series], runs: int, colours: list, names: list[str]) -> None:
    """One entry per series for a single run; for several runs one per run (colour) plus one per line style."""
    from matplotlib.lines import Line2D

    if runs == 1:
        handles, labels = ax.get_legend_handles_labels()
    else:
        seen_runs = dict.fromkeys((s.run, s.label) for s in series)
        handles = [Line2D([], [], color=colours[run % len(colours)], linewidth=2) for run, _ in seen_runs]
        labels = [label for _, label in seen_runs]
        if series[0].kind != "lr":
            for phase, column in dict.fromkeys((s.phase, s.column) for s in series):
                style = _style(Series(0, "", phase, column, "", [], []), names.index(column), "0.35")
                handles.append(Line2D([], [], **style))
                labels.append(f"{phase} {column}")
    rows = 16
    ax.legend(
        handles,
        labels,
        fontsize="small" if len(labels) <= 12 else "x-small",
        ncol=1 + (len(labels) - 1) // rows,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
    )


def _draw(series: list[Series], kinds, runs: int, x: str, normalise: bool, title, logy: bool):
    require("matplotlib", "plot", "plotting")
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend needed

    height = 3.0 if runs <= 12 else 3.0 + 0.12 * (min(runs, 16) - 12)
    figure = Figure(figsize=(9, height * len(kinds)), layout="constrained")
    axes = figure.subplots(len(kinds), 1, sharex=True, squeeze=False)
    colours = _palette(runs)
    for ax, kind in zip(axes[:, 0], kinds):
        mine = [s for s in series if s.kind == kind]
        names = list(dict.fromkeys(s.column for s in mine))
        for s in mine:
            ordinal = names.index(s.column)
            colour = colours[(s.run if runs > 1 else ordinal) % len(colours)]
            label = "lr" if kind == "lr" else f"{s.phase} {s.column}"
            ax.plot(s.x, s.y, label=label, markevery=max(1, len(s.x) // 40), **_style(s, ordinal, colour))
        ax.set_ylabel(YLABELS[kind] + (" / first value" if normalise and kind == "loss" else ""))
        ax.grid(True, alpha=0.3)
        if mine:
            _legend(ax, mine, runs, colours, names)
            if (kind == "loss" and logy) or (kind == "lr" and _spans_decades(mine)):
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, f"no {YLABELS[kind]} in these logs", ha="center", va="center", transform=ax.transAxes)
    axes[-1, 0].set_xlabel("iterations" if x == "iters" else "seconds")
    if title:
        figure.suptitle(title)
    return figure


def _spans_decades(series: list[Series]) -> bool:
    values = [v for s in series for v in s.y if math.isfinite(v)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20
