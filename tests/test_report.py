"""Run report (pipeline/viz/report.py): a tiny real training run's report page, its structure, its
self-containedness, and the page in a real headless Chromium (skipped without chromium or playwright)."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
from html.parser import HTMLParser

import pytest

from pipeline.glog import GlogFormatter, get_logger
from pipeline.solvers import build_solver
from pipeline.viz import report as report_module
from pipeline.viz.report import PhaseTimer, clean_svg, layer_timings, report_for_solver, write_report

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 16 dim: 8 } shape { dim: 16 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 2.99 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
SOLVER = """net: "{run}/tiny_net.prototxt"
test_iter: 2
test_interval: 5
base_lr: 0.1
lr_policy: "fixed"
display: 1
max_iter: 10
snapshot_prefix: "{run}/tiny"
random_seed: 1
"""
SECTIONS = ("metrics", "curves", "time", "layers", "net", "solver", "prototxts", "files")
# Anything a browser would fetch: attributes naming a URL, CSS url()/@import.
FETCHING = re.compile(r"""(?:\b(?:src|href|srcset|action|data|poster|xlink:href)\s*=\s*["']?\s*(?!data:|#)[^"'\s>]*"""
                      r"""(?:https?:|//))|url\(\s*["']?\s*(?:https?:|//)|@import""", re.I)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real 10-iteration training run (solver API, glog-format log file) and its report."""
    run = tmp_path_factory.mktemp("run")
    (run / "tiny_net.prototxt").write_text(NET)
    solver_text = SOLVER.format(run=run)
    (run / "solver.prototxt").write_text(solver_text)
    log_file = run / "tiny_train.log"
    log = get_logger()
    level = log.level
    handler = logging.FileHandler(log_file)
    handler.setFormatter(GlogFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        solver = build_solver(run / "solver.prototxt", progress=False)
        timer = PhaseTimer.attach(solver)
        solver.solve()
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(level)
    path = report_for_solver(solver, log_file, solver_text, timer, layer_iterations=2)
    assert path == run / "report.html"
    return {"run": run, "path": path, "html": path.read_text(), "solver": solver, "log": log_file, "timer": timer}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def parse_page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_report_structure(tiny_run):
    html = tiny_run["html"]
    page = parse_page(html)
    assert html.startswith("<!DOCTYPE html>")
    ids = {attrs.get("id") for _, attrs in page.tags}
    assert set(SECTIONS) <= ids
    # curves: one inline PNG that decodes
    images = [a for a in page.find("img") if "curves" in a.get("class", "")]
    assert len(images) == 1
    prefix = "data:image/png;base64,"
    assert images[0]["src"].startswith(prefix)
    assert base64.b64decode(images[0]["src"][len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    # metrics: the last test scores as the solver kept them, and the training summary
    text = " ".join(page.text)
    scores = tiny_run["solver"].test_scores[0]
    assert scores["iter"] == 10
    assert "test net #0 at iteration 10" in text
    assert f"{scores['accuracy']:.6g}" in text and f"{scores['loss']:.6g}" in text
    assert "smoothed train loss" in text
    # prototxts: solver and net, collapsible; the net's layers all appear
    summaries = [s for s in re.findall(r"<summary>(.*?)</summary>", html)]
    assert any("solver" in s for s in summaries) and any("tiny_net.prototxt" in s for s in summaries)
    assert len(page.find("details")) >= 2
    assert "snapshot_prefix: &#34;" in html or "snapshot_prefix: &quot;" in html  # escaped, not raw markup
    # timings: every phase, every layer
    for phase in ("data", "forward", "backward", "update", "test", "other"):
        assert re.search(rf"</span>{phase}</td>", html), phase
    for layer in ("data", "ip", "loss"):
        assert f"<td>{layer}</td>" in html
    # files beside it: relative links only
    assert {a["href"] for a in page.find("a") if not a["href"].startswith("#")} >= {"tiny_train.log"}


def test_report_is_self_contained(tiny_run):
    html = tiny_run["html"]
    page = parse_page(html)
    assert not page.find("script") and not page.find("link") and not page.find("iframe")
    assert not FETCHING.search(html), FETCHING.search(html)
    assert "http://" not in html and "https://" not in html
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:", "#")) or "/" not in value and ":" not in value, (tag, value)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_report_draws_the_net_inline(tiny_run):
    html = tiny_run["html"]
    assert html.count("<svg") == 1 and "</svg>" in html
    svg = html[html.index("<svg") : html.index("</svg>")]
    for layer in ("data", "ip", "accuracy", "loss"):
        assert f">{layer}</text>" in svg or f">{layer}\n" in svg or layer in svg


def test_phase_timer_accounts_for_the_wall_time(tiny_run):
    timings = tiny_run["timer"].finish()
    assert timings["iterations"] == 10
    phases = timings["phases"]
    assert set(phases) == {"data", "forward", "backward", "update", "test", "other"}
    assert all(v >= 0 for v in phases.values()) and phases["forward"] > 0 and phases["test"] > 0
    assert sum(phases.values()) == pytest.approx(timings["wall_seconds"], rel=1e-6)
    assert timings["data_wait_seconds"] is None  # DummyData does not prefetch


def test_phase_timer_changes_nothing_in_training(tmp_path):
    (tmp_path / "tiny_net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(run=tmp_path).replace("max_iter: 10", "max_iter: 4"))
    weights = []
    for timed in (False, True):
        solver = build_solver(tmp_path / "solver.prototxt", progress=False)
        if timed:
            PhaseTimer.attach(solver)
        solver.solve()
        weights.append([p.detach().clone() for p in solver.net.parameters()])
    assert all(a.equal(b) for a, b in zip(*weights))


def test_layer_timings_mark_layers_without_backward(tiny_run):
    rows = {r["name"]: r for r in layer_timings(tiny_run["solver"].net, 1)}
    assert list(rows) == [layer.name for layer in tiny_run["solver"].net.layers]
    assert rows["data"]["backward"] is False and rows["data"]["backward_ms"] == 0.0
    assert rows["ip"]["backward"] and rows["loss"]["backward"] and rows["ip"]["backward_ms"] > 0
    assert all(r["forward_ms"] > 0 for r in rows.values())
    assert all(p.grad is None for p in tiny_run["solver"].net.parameters())  # no gradients left behind


def test_clean_svg_drops_prologue_and_namespaces():
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n "http://www.w3.org/x.dtd">\n'
        '<!-- Generated by graphviz -->\n<svg width="8pt" xmlns="http://www.w3.org/2000/svg" '
        'xmlns:xlink="http://www.w3.org/1999/xlink"><g/></svg>'
    )
    assert clean_svg(svg) == '<svg width="8pt"><g/></svg>'


def test_report_without_graphviz_gives_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module.shutil, "which", lambda name: None)
    path = write_report(tmp_path, None, "base_lr: 0.1\n", {"net.prototxt": NET}, {"accuracy": 0.5})
    html = path.read_text()
    assert "<svg" not in html and "graphviz" in html and "digraph" in html
    assert "No training log was given" in html


def test_report_from_bad_inputs_is_still_written(tmp_path):
    truncated = tmp_path / "cut.log"
    truncated.write_text("I1123 12:00:00.000000  1 base.py:1] Solving tiny\nI1123 12:00:01.0000")
    timings = {
        "wall_seconds": 2.0,
        "iterations": 4,
        "phases": {"data": 0.5, "forward": 1.0, "backward": 0.25},
        "data_wait_seconds": 0.1,
        "layers": [{"name": "conv<1>", "type": "Convolution", "forward_ms": 1.5, "backward_ms": 3.0}],
        "layer_iterations": 5,
    }
    metrics = {"accuracy": 0.75, "note": "<b>not markup</b>"}
    path = write_report(tmp_path / "new" / "run", truncated, "", {"bad.prototxt": "layer {"}, metrics, timings)
    html = path.read_text()
    assert "conv&lt;1&gt;" in html and "&lt;b&gt;not markup&lt;/b&gt;" in html
    assert "could not be read for drawing" in html
    assert "Blocked waiting for the data prefetch queue: 0.100 s (5.0% of wall time" in html
    assert "250" in html  # data ms per iteration
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # atomic: no temporary left behind


def test_report_for_solver_never_fails_a_run(tiny_run, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "write_report", broken)
    solver = tiny_run["solver"]
    with caplog.at_level(logging.WARNING, logger=get_logger().name):
        get_logger().propagate = True
        try:
            assert report_for_solver(solver, tiny_run["log"], "", run_dir=tmp_path, layer_iterations=0) is None
        finally:
            get_logger().propagate = False
    assert "disk full" in caplog.text


# ----- the page in a real browser --------------------------------------------------------------------------
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    return None


def test_report_in_headless_chromium(tiny_run, tmp_path):
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    problems: list[str] = []
    off_page: list[str] = []
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))

            def only_the_page(route):
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    off_page.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_page)
            page.goto(tiny_run["path"].resolve().as_uri(), wait_until="load")
            curves = page.locator("img.curves")
            assert curves.count() == 1
            size = curves.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert size[0] and size[1] > 100 and size[2] > 100
            box = curves.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100
            if shutil.which("dot"):
                svg_box = page.locator("#net svg").bounding_box()
                assert svg_box and svg_box["width"] > 20 and svg_box["height"] > 20
            metrics = page.locator("#metrics")
            assert metrics.is_visible()
            shown = metrics.inner_text()
            accuracy = tiny_run["solver"].test_scores[0]["accuracy"]
            assert "accuracy" in shown and f"{accuracy:.6g}" in shown and "smoothed train loss" in shown
            assert page.locator("table.phases").is_visible()
            page.locator("#prototxts summary").first.click()  # collapsible prototxt opens
            assert page.locator("#prototxts pre").first.is_visible()
        finally:
            context.close()
    assert not problems, problems
    assert not off_page, off_page
