"""Training-curve plots: produced, non-empty and multicoloured for Caffe's logs, the study's logs and bad input."""

import math

import pytest
from conftest import SHARED, shared_path
from PIL import Image

from pipeline.viz import parse_lines, parse_log
from pipeline.viz.cli import plot_main
from pipeline.viz.plot import Series, _normalised, _style, collect_series, plot_logs, unique_labels

SEED_OUTPUTS = sorted(SHARED.glob("seedrepo/**/output/*.txt"))


def check_png(path, min_colours: int = 3) -> None:
    assert path.stat().st_size > 10_000
    image = Image.open(path).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 24)
    assert len(colours) >= min_colours
    white = max(colours)[0]  # the background
    assert white < 0.99 * image.width * image.height, "something is drawn"


def check_svg(path, *texts: str) -> None:
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 10_000
    for t in texts:
        assert t in text


@pytest.mark.parametrize("case", ["lenet", "cifar10_quick"])
def test_reference_log_plots(case, tmp_path):
    log = shared_path("caffe-reference", "logs", case, "caffe.log")
    result = plot_logs([log], [tmp_path / "c.png", tmp_path / "c.svg"], x="seconds", normalise=True)
    assert result.series == 4 and result.warnings == []  # train loss, test loss, test accuracy, lr
    check_png(tmp_path / "c.png")
    check_svg(tmp_path / "c.svg", "test accuracy", "train loss", "seconds", "/ first value")


def test_seedrepo_runs_overlaid(tmp_path):
    if not SEED_OUTPUTS:
        pytest.skip("../shared/seedrepo absent")
    logs = {path: parse_log(path) for path in SEED_OUTPUTS}
    result = plot_logs(list(logs.values()), tmp_path / "all.png", kinds=["loss", "accuracy", "lr"])
    assert result.series >= 3 * len(SEED_OUTPUTS) - 2  # every log gives a loss, an accuracy and a rate
    assert any("died" in w for w in result.warnings)  # output-ts_nin.txt
    check_png(tmp_path / "all.png", min_colours=20)
    sweep = [p for p in SEED_OUTPUTS if p.parent.name == "output" and p.stem.split("-")[-1].isdigit()]
    sweep = [p for p in sweep if int(p.stem.split("-")[-1]) <= 10]
    labels = [f"lambda {p.stem.split('-')[-1]}" for p in sweep]
    result = plot_logs(
        [logs[p] for p in sweep], tmp_path / "sweep.svg", labels=labels, kinds=["accuracy"], phases=["test"]
    )
    assert result.series == len(sweep)
    check_svg(tmp_path / "sweep.svg", *labels)


def test_series_and_styles():
    lines = [
        "I1123 10:00:00.000000 1 solver.cpp:1] Solving x",
        "I1123 10:00:01.000000 1 solver.cpp:1] Iteration 0 (0 iter/s, 0s/1 iters), loss = 2",
        "I1123 10:00:01.000000 1 solver.cpp:1]     Train net output #0: loss = 2 (* 1 = 2 loss)",
        "I1123 10:00:01.000000 1 solver.cpp:1] Iteration 0, lr = 0.1",
        "I1123 10:00:02.000000 1 solver.cpp:1] Iteration 10 (0 iter/s, 0s/1 iters), loss = 1",
        "I1123 10:00:02.000000 1 solver.cpp:1]     Train net output #0: loss = 1 (* 1 = 1 loss)",
        "I1123 10:00:02.000000 1 solver.cpp:1] Iteration 10, lr = 0.1",
        "I1123 10:00:03.000000 1 solver.cpp:1] Solving x",
        "I1123 10:00:04.000000 1 solver.cpp:1] Iteration 5 (0 iter/s, 0s/1 iters), loss = 0.5",
        "I1123 10:00:04.000000 1 solver.cpp:1]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)",
    ]
    log = parse_lines(lines, year=2026)
    loss = next(s for s in collect_series(log, 0, "r", ["loss"], ["train"], "iters") if s.column == "loss")
    assert loss.y[:2] == [2, 1] and math.isnan(loss.y[2]) and loss.x[3] == 5  # the resumed segment is apart
    by_time = next(s for s in collect_series(log, 0, "r", ["loss"], ["train"], "seconds") if s.column == "loss")
    assert by_time.x[3] == 2.0 + 1.0  # laid after the first segment's 2 seconds
    assert _normalised(loss).y[:2] == [1.0, 0.5] and _normalised(loss).y[3] == 0.25
    train, test = _style(loss, 0, "red"), _style(Series(0, "r", "test", "loss", "loss", [], []), 0, "red")
    assert train["linestyle"] == "-" and test["linestyle"] == "--" and "marker" in test
    assert unique_labels(["a/x.log", "b/y.log"]) == ["x.log", "y.log"]
    assert unique_labels(["/r/a/caffe.log", "/r/b/caffe.log"]) == ["a/caffe.log", "b/caffe.log"]


def test_bad_arguments_and_foreign_input(tmp_path, capsys):
    log = shared_path("caffe-reference", "logs", "lenet", "caffe.log")
    with pytest.raises(ValueError, match="labels"):
        plot_logs([log], tmp_path / "a.png", labels=["one", "two"])
    with pytest.raises(ValueError, match="kind"):
        plot_logs([log], tmp_path / "a.png", kinds=["speed"])
    with pytest.raises(ValueError, match="suffix"):
        plot_logs([log], tmp_path / "a.jpeg")
    foreign = tmp_path / "notes.txt"
    foreign.write_text("just some text\n")
    assert plot_main([str(foreign), "-o", str(tmp_path / "f.png")]) == 1
    err = capsys.readouterr().err
    assert "not a Caffe log" in err and "nothing to plot" in err and "Traceback" not in err
    assert (tmp_path / "f.png").exists()
    assert plot_main([str(log), str(foreign), "-o", str(tmp_path / "g.png"), "--label", "lenet"]) == 2
    assert "2 logs" in capsys.readouterr().err
