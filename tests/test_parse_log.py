"""Log parsing: BVLC parse_log.py's own CSVs, Caffe's full-precision traces, our trainer's log, and bad input."""

import csv
import datetime as dt
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SHARED, shared_path

from pipeline.viz import parse_lines, parse_log
from pipeline.viz.cli import parse_log_main

REFERENCE_LOGS = ["lenet", "cifar10_quick"]
TRAIN_CASES = sorted(p.parent.name for p in SHARED.glob("caffe-reference/train/*/caffe.log"))
SEED_LOGS = sorted(str(p.relative_to(SHARED)) for p in SHARED.glob("seedrepo/**/output/*.txt"))


def bvlc_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [[float(v) if v else math.nan for v in row] for row in rows[1:]]


def same(a, b) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def f6(value: str) -> float:
    """A float32 trace value as Caffe's log prints it (C++ `ostream << float`: 6 significant digits)."""
    return float(f"{float(np.float32(value)):.6g}")


def synth(events, start=dt.datetime(2026, 11, 23, 10, 0, 0), tid=4242, year=False):
    """glog lines (no year in the prefix unless `year`, as Caffe's) from (seconds after start, message) pairs."""
    lines = []
    for seconds, message in events:
        when = start + dt.timedelta(seconds=seconds)
        lines.append(f"I{when:%Y}"[: 5 if year else 1] + f"{when:%m%d %H:%M:%S.%f} {tid} solver.cpp:239] {message}")
    return lines


def fake_run(iters=range(0, 41, 10), test_every=20, test_nets=1, t0=0.0, lr=0.01):
    """The lines Caffe writes for a short run (display at `iters`, a final forward and test at the end)."""
    events = [(t0, "Solving FakeNet")]
    t = t0
    last = iters[-1]
    for i in iters:
        t += 1.0
        if i % test_every == 0:
            for k in range(test_nets):
                events += [(t, f"Iteration {i}, Testing net (#{k})")]
                events += [(t + 0.1, f"    Test net output #0: accuracy = {0.1 * k + i / 1000:g}")]
                events += [(t + 0.1, f"    Test net output #1: loss = {2 - i / 100:g} (* 1 = {2 - i / 100:g} loss)")]
        if i == last:
            events += [(t + 0.2, f"Iteration {i}, loss = {1 / (i + 1):g}"), (t + 0.3, "Optimization Done.")]
            break
        events += [(t + 0.2, f"Iteration {i} (10 iter/s, 1s/10 iters), loss = {1 / (i + 1):g}")]
        events += [(t + 0.2, f"    Train net output #0: loss = {1 / (i + 1):g} (* 1 = {1 / (i + 1):g} loss)")]
        events += [(t + 0.2, f"Iteration {i}, lr = {lr / (i + 1):g}")]
    return synth(events)


# ----- BVLC's own CSVs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", REFERENCE_LOGS)
def test_bvlc_mode_reproduces_bvlc_csv_files(case, tmp_path):
    folder = shared_path("caffe-reference", "logs", case)
    log = parse_log(folder / "caffe.log", compat="bvlc")
    assert log.warnings == []
    for path in log.write_csv(tmp_path):
        assert path.read_bytes() == (folder / path.name).read_bytes(), path.name
    for phase in ("train", "test"):
        columns, rows = bvlc_csv(folder / f"caffe.log.{phase}")
        table = log.table(phase)
        assert table.columns == columns
        assert len(table.rows) == len(rows)
        for ours, theirs in zip(table.rows, rows):
            assert all(same(ours[c], v) for c, v in zip(columns, theirs))


@pytest.mark.parametrize("case", REFERENCE_LOGS)
def test_default_mode_agrees_with_bvlc_but_for_its_quirks(case):
    folder = shared_path("caffe-reference", "logs", case)
    log = parse_log(folder / "caffe.log")
    assert log.finished and log.segments == 1 and log.net_name
    for phase in ("train", "test"):
        columns, rows = bvlc_csv(folder / f"caffe.log.{phase}")
        ours = {row["NumIters"]: row for row in log.table(phase).rows}
        for theirs in rows:
            row = ours[int(theirs[0])]
            for c, v in zip(columns[3:], theirs[3:]):
                assert same(row[c], v), (phase, c)
            assert row["Seconds"] == theirs[1]
    # BVLC's train rows carry the rate of the display before them: ours of row k is theirs of row k + 1.
    _, rows = bvlc_csv(folder / "caffe.log.train")
    ours = log.train.column("LearningRate")
    assert [ours[k] for k in range(len(rows) - 1)] == [rows[k + 1][2] for k in range(len(rows) - 1)]
    # Caffe's final forward pass ("Iteration max_iter, loss = x") is a row of its own, with the smoothed loss only.
    assert log.train.rows[-1]["NumIters"] == log.test.rows[-1]["NumIters"] and "loss" not in log.train.rows[-1]


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_default_mode_values_are_caffes_at_printed_precision(case):
    """Caffe runs with display 1: every row against pycaffe's full-precision trace of the same run."""
    folder = shared_path("caffe-reference", "train", case)
    with open(folder / "trace.csv", newline="") as f:
        trace = {int(r["iter"]): r for r in csv.DictReader(f)}
    log = parse_log(folder / "caffe.log")
    assert log.finished and not log.warnings
    raw = (
        "loss_last_sub_batch_from_step" if "loss_last_sub_batch_from_step" in next(iter(trace.values())) else "net_loss"
    )
    for row in log.train.rows:
        t = trace[row["NumIters"]]
        assert row["SmoothedLoss"] == f6(t["loss"])
        if t["final_forward_only"]:
            assert "loss" not in row
        else:
            assert row["loss"] == f6(t[raw]) and row["LearningRate"] == f6(t["lr"])
    tested = [i for i, t in trace.items() if t["test_accuracy"]]
    assert [row["NumIters"] for row in log.test.rows] == tested
    for row in log.test.rows:
        t = trace[row["NumIters"]]
        assert (row["accuracy"], row["loss"]) == (f6(t["test_accuracy"]), f6(t["test_loss"]))
        if t["lr"]:
            assert row["LearningRate"] == f6(t["lr"])


def test_resumed_run_is_a_segment_of_its_own():
    folder = shared_path("caffe-reference", "train", "lenet_resume")
    first = (folder / "caffe_initial_run.log").read_text().splitlines()
    resumed = (folder / "caffe.log").read_text().splitlines()
    both = parse_lines(first + resumed, year=2026)
    alone = parse_lines(resumed, year=2026)
    assert both.segments == 2 and alone.segments == 1
    for phase in ("train", "test"):
        second = [r for r in both.table(phase).rows if r["Segment"] == 1]
        assert [dict(r, Segment=0) for r in second] == alone.table(phase).rows
        iters = [r["NumIters"] for r in both.table(phase).rows]
        assert iters.count(100) == 2 and iters.count(200) == 2
    # without a second "Solving" line, iterations going back still start a new segment
    lines = fake_run(range(0, 41, 10)) + [line for line in fake_run(range(20, 61, 10)) if "Solving" not in line]
    log = parse_lines(lines, year=2026)
    assert log.segments == 2 and [r["NumIters"] for r in log.test.rows] == [0, 20, 40, 20, 40, 60]


# ----- what Caffe's tool gets wrong or cannot read ---------------------------------------------------------------
def test_several_test_nets_and_multi_element_outputs():
    log = parse_lines(fake_run(test_nets=3), year=2026)
    assert log.test.columns == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss", "accuracy#1", "loss#1",
                                "accuracy#2", "loss#2", "Segment"]  # fmt: skip
    assert [r["NumIters"] for r in log.test.rows] == [0, 20, 40]
    assert log.test.rows[1]["accuracy#2"] == pytest.approx(0.22)
    bvlc = parse_lines(fake_run(test_nets=3), compat="bvlc", year=2026)
    assert bvlc.test.columns[3:] == ["accuracy", "loss"]  # BVLC keeps the last net's values only
    labels = [f"    Train net output #{k}: label = {k % 10}" for k in range(12)]
    lines = synth([(0, "Solving x"), (1, "Iteration 0 (0 iter/s, 0s/1 iters), loss = 1"), *[(1, m) for m in labels]])
    log = parse_lines(lines, year=2026)
    assert log.train.columns[3:-2] == ["label"] + [f"label[{k}]" for k in range(1, 12)]
    assert log.train.rows[0]["label[11]"] == 1


def test_day_and_year_rollover_and_year_prefix():
    start = dt.datetime(2025, 12, 31, 23, 59, 58)
    events = [(0, "Solving x"), (1, "Iteration 0, Testing net (#0)"), (1, "    Test net output #0: accuracy = 0.5")]
    events += [
        (86400 * 2 + 1, "Iteration 10, Testing net (#0)"),
        (86400 * 2 + 3, "    Test net output #0: accuracy = 1"),
    ]
    log = parse_lines(synth(events, start), year=2025)
    assert log.test.column("Seconds") == [1.0, 86400 * 2 + 3.0]
    assert parse_lines(synth(events, start, year=True), year=1999).test.column("Seconds") == [1.0, 86400 * 2 + 3.0]


def test_interleaved_lines_change_nothing():
    clean = fake_run()
    noisy = []
    for k, line in enumerate(clean):
        noisy.append(line)
        noisy.append(f"I1123 10:00:0{k % 10}.000000 999 data_layer.cpp:73] Restarting data prefetching. Iteration 7")
        noisy.append("\x1b[2K 45%|████▌     | 45/100 [00:01<00:01, 40.1it/s, loss=0.31]")
        noisy.append("/x/y.py:3: UserWarning: something Test net output #0: accuracy = 9")
    merged = [clean[i] + clean[i + 1] if i % 3 == 0 and i + 1 < len(clean) else clean[i] for i in range(len(clean))]
    merged = [line for i, line in enumerate(merged) if not (i % 3 == 1)]
    reference = parse_lines(clean, year=2026)
    for lines in (noisy, merged):
        log = parse_lines(lines, year=2026)
        assert (log.train.rows, log.test.rows) == (reference.train.rows, reference.test.rows)
        assert log.warnings == []


def test_diverged_run(tmp_path):
    bad = {"loss = 0.0909091 (* 1 = 0.0909091 loss)": "loss = inf (* 1 = inf loss)",
           "loss = 0.047619 (* 1 = 0.047619 loss)": "loss = -nan (* 1 = -nan loss)"}  # fmt: skip
    lines = [next((line.replace(a, b) for a, b in bad.items() if a in line), line) for line in fake_run()]
    log = parse_lines(lines, year=2026, source="diverged.log")
    assert log.train.column("loss")[1] == math.inf and math.isnan(log.train.column("loss")[2])
    assert any("train loss = inf at iteration 10 (diverged)" in w for w in log.warnings)
    path = log.write_json(tmp_path / "d.json")
    assert [row[3] for row in json.loads(path.read_text())["train"]["data"]][:4] == [1, None, None, 0.0322581]
    bvlc = parse_lines(lines, year=2026, compat="bvlc")
    assert any("unreadable value '-'" in w for w in bvlc.warnings)


@pytest.mark.parametrize("compat", [None, "bvlc"])
@pytest.mark.parametrize("source", ["lenet", "synthetic"])
def test_truncated_logs_give_what_they_hold(source, compat, tmp_path):
    if source == "lenet":
        source = shared_path("caffe-reference", "logs", "lenet", "caffe.log")
    else:
        source = tmp_path / "synthetic.log"
        source.write_text("\n".join(fake_run(range(0, 201, 10))) + "\n")
    text = source.read_text()
    full = parse_log(source, compat=compat)
    for fraction in (0.05, 0.5, 0.8, 0.999):
        cut = tmp_path / f"cut{fraction}.log"
        cut.write_text(text[: int(len(text) * fraction)])
        log = parse_log(cut, compat=compat)
        for phase in ("train", "test"):
            rows, whole = log.table(phase).rows, full.table(phase).rows
            assert len(rows) <= len(whole)
            for row, reference in zip(rows[:-1], whole):
                assert row == reference
        if compat is None and not log.empty and not log.finished:
            assert any("ends" in w or "incomplete" in w for w in log.warnings)
        if fraction > 0.5:
            assert len(log.train) > len(full.train) // 2


@pytest.mark.parametrize("kind", ["empty", "csv", "binary", "latin1"])
def test_foreign_files_give_a_message_not_a_traceback(kind, tmp_path, capsys):
    path = tmp_path / f"foreign.{kind}"
    if kind == "csv":
        path.write_text("NumIters,Seconds,LearningRate,loss\r\n0.0,0.1,0.01,2.3\r\n")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 64)
    elif kind == "latin1":
        path.write_bytes("Iteration 5, loss = caf\xe9\n".encode("latin-1"))
    else:
        path.write_bytes(b"")
    for compat in (None, "bvlc"):
        log = parse_log(path, compat=compat)
        assert log.empty and log.warnings
    assert "not a Caffe log" in parse_log(path).warnings[-1]
    assert parse_log_main([str(path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "nothing to tabulate" in err and "Traceback" not in err
    assert parse_log_main([str(tmp_path / "missing.log"), str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


# ----- the original study's logs and our own ----------------------------------------------------------------------
@pytest.mark.parametrize("name", SEED_LOGS)
def test_every_seedrepo_log_parses(name):
    log = parse_log(shared_path(name))
    assert len(log.test) > 0
    assert len(log.train) > 0 or any("died" in w for w in log.warnings)
    for phase in ("train", "test"):
        seconds = [s for s in log.table(phase).column("Seconds")]
        assert all(a <= b for a, b in zip(seconds, seconds[1:])), "time runs on across days"
    if name.endswith("output-alex3.txt"):  # resumed at 106000 from a snapshot, ran from Aug 8 to Aug 10
        assert log.train.rows[0]["NumIters"] == 106000 and log.segments == 1 and log.train.rows[-1]["Seconds"] > 1.5e5
    if name.endswith("output-ts_mini.txt"):
        assert {o.column: o.loss_weight for o in log.train_outputs} == {"loss": 0.9, "ts_loss": 0.1}


def test_our_trainer_log_holds_what_the_trainer_recorded(tmp_path):
    from google.protobuf import text_format

    from pipeline.glog import get_logger, setup_logging
    from pipeline.proto import caffe_pb2
    from pipeline.solvers import build_solver

    param = text_format.Parse(
        'net: "prototxt/mlp.prototxt" test_iter: 1 test_interval: 4 base_lr: 0.05 lr_policy: "step" gamma: 0.5 '
        "stepsize: 3 display: 2 max_iter: 8 snapshot_after_train: false random_seed: 1",
        caffe_pb2.SolverParameter(),
    )
    log_path = tmp_path / "ours.log"
    setup_logging(log_path, stream=io.StringIO())
    try:
        solver = build_solver(
            param,
            variables={"data": "dummy", "hidden": [8], "batch": 4, "test_batch": 4},
            progress=False,
            solver_path=str(ROOT / "prototxt" / "solver.prototxt"),
        )
        seen, tests = {}, []
        solver.on_iteration.append(lambda s: seen.update({s.iter - 1: (s.smoothed_loss, s.last_loss, s.rate)}))
        test = solver.test
        solver.test = lambda i=0: tests.append((solver.iter, i, test(i))) or tests[-1][2]
        solver.solve()
    finally:
        for handler in list(get_logger().handlers):
            get_logger().removeHandler(handler)
            handler.close()
    log = parse_log(log_path)
    assert log.finished and not log.warnings
    shown = [r for r in log.train.rows if "loss" in r]
    assert [r["NumIters"] for r in shown] == [0, 2, 4, 6]
    for row in shown:
        smoothed, loss, rate = seen[row["NumIters"]]
        assert (row["SmoothedLoss"], row["loss"], row["LearningRate"]) == (f6(smoothed), f6(loss), f6(rate))
    assert [(r["NumIters"], r["accuracy"], r["loss"]) for r in log.test.rows] == [
        (it, f6(scores["accuracy"]), f6(scores["loss"])) for it, _, scores in tests
    ]


# ----- the command line -------------------------------------------------------------------------------------------
def test_command_line_writes_csv_and_json(tmp_path):
    folder = shared_path("caffe-reference", "logs", "lenet")
    assert parse_log_main([str(folder / "caffe.log"), str(tmp_path), "--json", "--quiet"]) == 0
    data = json.loads((tmp_path / "caffe.log.json").read_text())
    log = parse_log(folder / "caffe.log")
    assert data["train"]["columns"] == log.train.columns and len(data["test"]["data"]) == len(log.test)
    assert data["test"]["data"][0][:4] == [0, 0.116699, 0.01, 0.068]
    out = tmp_path / "bvlc"
    script = [sys.executable, str(ROOT / "tools" / "parse_log.py"), str(folder / "caffe.log"), str(out)]
    done = subprocess.run([*script, "--compat", "bvlc"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Wrote", str(out / "caffe.log.train"), "Wrote", str(out / "caffe.log.test")]
    assert (out / "caffe.log.test").read_bytes() == (folder / "caffe.log.test").read_bytes()
