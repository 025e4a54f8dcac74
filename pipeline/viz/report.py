"""Run report: one self-contained HTML page beside a run's snapshots (`<run_dir>/report.html`).

The page holds the rendered solver and net prototxts, the training curves (from the log, PNG as a data URI),
the final metrics, the net drawing (graphviz SVG inline), where the time went (data, forward, backward, update,
test) and per-layer forward/backward milliseconds. No scripts, fonts or links off the page: it opens in a
browser with no network. A part that cannot be made (no graphviz, an unreadable log) becomes a note on the
page; the page itself is always written (atomically).

    path = write_report(run_dir, log_file, solver_text, net_texts, {"accuracy": 0.98}, timings)

`report_for_solver(solver, log_file, solver_text, timer)` gathers all of this from a Solver after solve().
"""

from __future__ import annotations

import base64
import logging
import math
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_write
from pipeline.glog import get_logger
from pipeline.viz.run_timing import PHASES, PhaseTimer, layer_timings

TEMPLATE = "report_template.html"
REPORT_NAME = "report.html"
PHASE_COLOURS = {
    "data": "#7a9a3a",
    "forward": "#2f6fb0",
    "backward": "#c0713a",
    "update": "#8e5fb5",
    "test": "#3aa0a0",
    "other": "#b7bcc6",
}
#: Outputs shown as headline cards, best first.
HEADLINE = ("accuracy", "loss")

__all__ = ["PhaseTimer", "layer_timings", "report_for_solver", "solver_metrics", "write_report"]


def fmt(value) -> str:
    """Numbers as the log prints them (6 significant digits); ints as ints; anything else as text."""
    if isinstance(value, (bool, str, int)):
        return str(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.6g}" if math.isfinite(value) else str(value)


# ----- sections ----------------------------------------------------------------------------------------
def _curves(log_file, label: str) -> dict:
    """The curves PNG as a data URI, with the log's summary and warnings."""
    from pipeline.viz.parse_log import parse_log
    from pipeline.viz.plot import plot_logs

    view = {"curves": None, "curve_kinds": "", "log_summary": "", "log_warnings": [], "parsed": None}
    if log_file is None:
        view["log_summary"] = "No training log was given, so there are no curves."
        return view
    try:
        parsed = parse_log(log_file)
    except PipelineError as exc:
        view["log_summary"] = f"The training log could not be read: {exc}"
        return view
    view["parsed"] = parsed
    view["log_summary"] = parsed.summary() + ("" if parsed.finished else " (the run did not log its end)")
    view["log_warnings"] = list(parsed.warnings)
    if parsed.empty:
        view["log_summary"] += "; nothing to plot."
        return view
    kinds = ["loss"]
    if any(o.kind == "accuracy" for phase in ("train", "test") for o in parsed.outputs(phase)):
        kinds.append("accuracy")
    if any(math.isfinite(v) for v in parsed.train.column("LearningRate")):
        kinds.append("lr")
    view["curve_kinds"] = ", ".join(kinds)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "curves.png"
        try:
            result = plot_logs([parsed], png, labels=[label], kinds=kinds, title=label)
        except (PipelineError, ValueError, OSError) as exc:
            view["log_warnings"].append(f"the curves could not be drawn: {exc}")
            return view
        view["log_warnings"] += [w for w in result.warnings if w not in parsed.warnings]
        view["curves"] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    return view


def _net_param(net, net_texts: dict[str, str]):
    """The NetParameter to draw: `net` (a NetParameter, a prototxt path, or a Net's own), else the first net text."""
    from pipeline.proto import caffe_pb2
    from pipeline.text.prototxt import parse_text, read_net

    if isinstance(net, caffe_pb2.NetParameter):
        return net
    if isinstance(net, (str, Path)):
        return read_net(net)
    if net is not None and isinstance(getattr(net, "param", None), caffe_pb2.NetParameter):
        return net.param
    for name, text in net_texts.items():
        return parse_text(text, caffe_pb2.NetParameter(), name)
    return None


def clean_svg(svg: str) -> str:
    """Graphviz SVG made fit to sit inside HTML: no XML prologue, DOCTYPE (an http reference), comments or
    namespace declarations (the HTML parser puts inline <svg> in the SVG namespace by itself)."""
    svg = re.sub(r"<\?xml.*?\?>|<!DOCTYPE[^>]*>|<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg)
    return svg.strip()


def _drawing(net, net_texts: dict[str, str]) -> dict:
    from pipeline.viz.draw import DrawError, draw_net

    view = {"net_svg": None, "net_notes": [], "net_dot": None}
    try:
        param = _net_param(net, net_texts)
    except (PipelineError, OSError) as exc:
        view["net_notes"].append(f"The net could not be read for drawing: {exc}")
        return view
    if param is None:
        view["net_notes"].append("No net was given, so there is no drawing.")
        return view
    with tempfile.TemporaryDirectory() as tmp, _quiet_log():
        has_dot = shutil.which("dot") is not None
        output = Path(tmp) / ("net.svg" if has_dot else "net.dot")
        try:
            result = draw_net(param, output)
        except DrawError as exc:
            view["net_notes"].append(f"The drawing failed: {exc}")
            return view
        except (PipelineError, ValueError, OSError) as exc:
            view["net_notes"].append(f"The net could not be drawn: {exc}")
            return view
        view["net_notes"] += result.warnings
        if has_dot:
            view["net_svg"] = clean_svg(output.read_text())
            legend = "Teacher layers (orange cluster): " + ", ".join(result.teacher) if result.teacher else ""
            view["net_notes"] += [legend] if legend else []
        else:
            view["net_dot"] = result.dot
            view["net_notes"].append(
                "graphviz's `dot` program is not installed, so the net is not drawn here; its graphviz source is "
                "below. Install graphviz (Debian/Ubuntu: apt-get install graphviz) and run tools/draw_net.py."
            )
    return view


@contextmanager
def _quiet_log():
    """Building the nets for the drawing's blob shapes logs as a run would; keep that out of the run's log."""
    log = get_logger()
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def _metric_groups(final_metrics: dict) -> tuple[list[dict], list[dict]]:
    """Tables of metrics (a nested dict is one table per key) and headline cards."""
    flat = [(k, v) for k, v in final_metrics.items() if not isinstance(v, dict)]
    groups = [{"title": "", "rows": [(k, fmt(v)) for k, v in flat]}] if flat else []
    for key, value in final_metrics.items():
        if isinstance(value, dict):
            groups.append({"title": str(key), "rows": [(k, fmt(v)) for k, v in value.items()]})
    cards = []
    for name in HEADLINE:
        for group in groups:
            for key, value in group["rows"]:
                if key == name or key.startswith(name + "#"):
                    title = f"{group['title']}: {key}" if group["title"] else key
                    cards.append({"key": title, "value": value})
    return groups, cards[:6]


def _timing_view(timings: dict | None) -> dict:
    view = {"phases": [], "time_notes": [], "layers": [], "wall_seconds": "", "wall_per_iter": ""}
    view.update(layer_iterations=0, layer_total_forward="", layer_total_backward="", layer_notes=[])
    if not timings:
        return view
    phases = timings.get("phases") or {}
    wall = float(timings.get("wall_seconds") or sum(phases.values()) or 0.0)
    iters = int(timings.get("iterations") or 0)
    per_iter = (lambda s: fmt(1e3 * s / iters)) if iters else (lambda s: "")
    for name in [p for p in PHASES if p in phases] + [p for p in phases if p not in PHASES]:
        seconds = float(phases[name])
        percent = 100.0 * seconds / wall if wall > 0 else 0.0
        view["phases"].append(
            {
                "name": name,
                "seconds": f"{seconds:.3f}",
                "percent": round(percent, 3),
                "percent_text": f"{percent:.1f}%",
                "per_iter": per_iter(seconds),
                "colour": PHASE_COLOURS.get(name, "#999999"),
            }
        )
    view["wall_seconds"] = f"{wall:.3f}"
    view["wall_per_iter"] = per_iter(wall)
    if iters:
        view["time_notes"].append(f"{iters} training iterations.")
    wait = timings.get("data_wait_seconds")
    if wait is not None and wall > 0:
        view["time_notes"].append(
            f"Blocked waiting for the data prefetch queue: {wait:.3f} s ({100 * wait / wall:.1f}% of wall time; "
            "part of the data phase)."
        )
    view["time_notes"].append(
        "data: the train net's data layers; forward/backward: the train net's passes; update: the solver's "
        "weight update; test: the test passes; other: logging, snapshots and the rest."
    )
    layers = timings.get("layers") or []
    total = sum(float(x["forward_ms"]) + float(x["backward_ms"]) for x in layers) or 1.0
    widest = max((float(x["forward_ms"]) + float(x["backward_ms"]) for x in layers), default=1.0) or 1.0
    for x in layers:
        fwd, bwd = float(x["forward_ms"]), float(x["backward_ms"])
        view["layers"].append(
            {
                "name": x["name"],
                "type": x.get("type", ""),
                "forward": f"{fwd:.4g}",
                "backward": f"{bwd:.4g}" if x.get("backward", True) else "none",
                "fwd_width": round(160 * fwd / widest, 1),
                "bwd_width": round(160 * bwd / widest, 1),
                "share": f"{100 * (fwd + bwd) / total:.1f}%",
            }
        )
    if layers:
        view["layer_iterations"] = timings.get("layer_iterations", "?")
        if any(x.get("backward", True) is False for x in layers):
            view["layer_notes"].append(
                "backward none: training runs the layer without a backward pass (a frozen teacher, data, or a "
                "layer no loss depends on)."
            )
        view["layer_total_forward"] = f"{sum(float(x['forward_ms']) for x in layers):.4g}"
        view["layer_total_backward"] = f"{sum(float(x['backward_ms']) for x in layers):.4g}"
    return view


def _files(run_dir: Path) -> list[dict]:
    if not run_dir.is_dir():
        return []
    return [
        {"name": p.name, "href": quote(p.name), "size": f"{p.stat().st_size:,}"}
        for p in sorted(run_dir.iterdir())
        if p.is_file() and p.name != REPORT_NAME and not p.name.startswith(".")
    ]


# ----- the page ----------------------------------------------------------------------------------------
def render_report(
    run_dir, log_file, solver_text: str, net_texts: dict[str, str], final_metrics: dict, timings=None, net=None
) -> str:
    """The report page's HTML (write_report writes it)."""
    import jinja2

    run_dir = Path(run_dir)
    curves = _curves(log_file, run_dir.name or str(run_dir))
    parsed = curves.pop("parsed")
    net_name = (parsed.net_name if parsed is not None else None) or _first_net_name(net_texts)
    groups, cards = _metric_groups(final_metrics or {})
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    page = env.get_template(TEMPLATE).render(
        title=f"Run report: {run_dir.name or run_dir}" + (f" ({net_name})" if net_name else ""),
        subtitle=f"{run_dir.resolve()}",
        metric_groups=groups,
        cards=cards,
        **curves,
        **_timing_view(timings),
        **_drawing(net, net_texts),
        solver_text=solver_text or "",
        net_texts=list(net_texts.items()),
        files=_files(run_dir),
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
        log_name=Path(log_file).name if log_file else "no log",
    )
    return page


def write_report(
    run_dir,
    log_file,
    solver_text: str,
    net_texts: dict[str, str],
    final_metrics: dict,
    timings: dict | None = None,
    net=None,
) -> Path:
    """Write `<run_dir>/report.html` (atomically) and return its path.

    final_metrics: {name: number} and/or {group: {name: number}} (one table per group). timings: as
    PhaseTimer.finish() gives, optionally with "layers" (layer_timings()) and "layer_iterations". net: what to
    draw (NetParameter, prototxt path or Net); default the first of net_texts.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    page = render_report(run_dir, log_file, solver_text, net_texts, final_metrics, timings, net)
    path = run_dir / REPORT_NAME
    atomic_write(path, page.encode("utf-8"))
    return path


def _first_net_name(net_texts: dict[str, str]) -> str | None:
    for text in net_texts.values():
        match = re.search(r'^\s*name:\s*"([^"]*)"', text, flags=re.M)
        if match:
            return match.group(1)
    return None


# ----- from a Solver -----------------------------------------------------------------------------------
def solver_metrics(solver) -> dict:
    """Final metrics of a solver after solve(): the last test scores of each test net and the train loss."""
    metrics: dict = {
        "training": {
            "iterations": int(solver.iter),
            "smoothed train loss": float(solver.smoothed_loss),
            "last train loss": float(solver.last_loss),
        }
    }
    for i, scores in enumerate(solver.test_scores):
        if scores:
            rest = {k: v for k, v in scores.items() if k != "iter"}
            metrics[f"test net #{i} at iteration {scores.get('iter', '?')}"] = rest
    return metrics


def report_for_solver(
    solver,
    log_file,
    solver_text: str,
    timer: PhaseTimer | None = None,
    *,
    run_dir=None,
    layer_iterations: int = 3,
) -> Path | None:
    """Write the report of a finished solver beside its snapshots; returns its path, or None (with a warning
    in the log) when it could not be written: a report never fails a finished training run."""
    log = get_logger()
    run_dir = Path(run_dir) if run_dir is not None else Path(solver.param.snapshot_prefix).parent
    try:
        timings = timer.finish() if timer is not None else {}
        if layer_iterations > 0:
            try:
                timings["layers"] = layer_timings(solver.net, layer_iterations)
                timings["layer_iterations"] = layer_iterations
            except (PipelineError, RuntimeError) as exc:
                log.warning("Per-layer timing skipped: %s", exc)
        path = write_report(run_dir, log_file, solver_text, solver.net_texts, solver_metrics(solver), timings or None)
    except (PipelineError, OSError, ValueError, RuntimeError, ImportError) as exc:
        log.warning("Run report not written: %s", exc)
        return None
    log.info("Run report written to %s", path)
    return path
