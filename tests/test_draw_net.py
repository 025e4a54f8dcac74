"""Net drawings: every layer present, teacher apart, frozen layers marked, shapes on edges, graphviz or not."""

import re
import shutil

import pytest
from conftest import ROOT, shared_path
from PIL import Image

from pipeline.text.prototxt import read_net
from pipeline.viz import draw
from pipeline.viz.cli import draw_main
from pipeline.viz.draw import DrawError, draw_net, draw_net_file

TEACHER_STUDENT = ROOT / "prototxt" / "teacher_student.prototxt"
HAS_DOT = shutil.which("dot") is not None


def node_labels(dot: str) -> dict[str, str]:
    """node id -> first line of its label (the layer or blob name)."""
    return {m.group(1): m.group(2) for m in re.finditer(r'^\s*(\w+) \[label="([^"\\]*)', dot, re.M)}


def cluster_of(dot: str) -> str:
    return dot[dot.index("subgraph cluster_teacher") : dot.index("  }\n", dot.index("subgraph cluster_teacher"))]


def test_teacher_student_dot_source(tmp_path):
    net = read_net(TEACHER_STUDENT, {"data": "dummy"})
    result = draw_net(net, tmp_path / "ts.dot")
    dot = (tmp_path / "ts.dot").read_text()
    assert dot == result.dot and result.warnings == []
    labels = node_labels(dot)
    layer_names = [labels[n] for n in labels if n.startswith("layer")]
    assert sorted(layer_names) == sorted(layer.name for layer in net.layer)  # both "mnist" data layers included
    teacher = [layer.name for layer in net.layer if layer.name.startswith("t_")]
    assert result.teacher == teacher
    cluster = cluster_of(dot)
    assert 'label="teacher"' in cluster
    assert all(f'label="{name}\\n' in cluster for name in teacher)
    assert not any(f'label="{layer.name}\\n' in cluster for layer in net.layer if layer.name not in teacher)
    assert result.frozen == ["t_conv1", "t_conv2", "t_ip1", "t_ip2"]
    assert dot.count("dashed") == 4 and dot.count("frozen (lr_mult 0)") == 4
    assert '[label="100x20x24x24"]' in dot and '[label="scalar"]' in dot  # shapes from the built net
    colours = set(re.findall(r'shape=box, style="[^"]*", fillcolor="(#\w+)"', dot))
    assert len(colours) >= 6  # data, fully connected, activation, convolution, pooling, metric, loss
    assert "rankdir=LR" in dot and "all phases" in dot


@pytest.mark.skipif(not HAS_DOT, reason="graphviz's dot not installed")
def test_teacher_student_renders(tmp_path):
    for suffix in ("png", "svg"):
        draw_net_file(TEACHER_STUDENT, tmp_path / f"ts.{suffix}", variables={"data": "dummy"}, rankdir="TB")
    image = Image.open(tmp_path / "ts.png").convert("RGB")
    assert (tmp_path / "ts.png").stat().st_size > 20_000 and len(image.getcolors(1 << 24)) > 10
    svg = (tmp_path / "ts.svg").read_text()
    assert "t_conv1" in svg and "teacher" in svg


def test_phase_and_direction(tmp_path):
    result = draw_net_file(TEACHER_STUDENT, tmp_path / "t.dot", variables={"data": "dummy"}, phase="TEST", rankdir="TB")
    names = list(node_labels(result.dot).values())
    assert "rankdir=TB" in result.dot and "(TEST)" in result.dot
    assert names.count("mnist") == 1 and "accuracy" in names and "teacher_accuracy" in names
    with pytest.raises(ValueError, match="rankdir"):
        draw_net_file(TEACHER_STUDENT, tmp_path / "t.dot", variables={"data": "dummy"}, rankdir="up")


def test_unbuildable_net_is_drawn_without_shapes(tmp_path):
    result = draw_net_file(ROOT / "prototxt" / "lenet.prototxt", tmp_path / "lenet.dot", variables={"data_root": "/x"})
    assert result.warnings and "does not build" in result.warnings[0]
    assert not re.search(r"-> \w+ \[label=", result.dot)  # no shapes on the edges
    assert {"conv1", "pool1", "ip2", "loss"} <= set(node_labels(result.dot).values())


def test_missing_graphviz_writes_dot_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    with pytest.raises(DrawError, match="apt-get install graphviz") as error:
        draw_net_file(TEACHER_STUDENT, tmp_path / "ts.png", variables={"data": "dummy"})
    assert str(tmp_path / "ts.dot") in str(error.value)
    assert "t_conv1" in (tmp_path / "ts.dot").read_text() and not (tmp_path / "ts.png").exists()
    assert draw_main([str(TEACHER_STUDENT), str(tmp_path / "b.svg"), "--set", "data=dummy"]) == 3


def test_seed_teacher_found_by_frozen_params(tmp_path):
    """The original study's ts_lenet: teacher layers named conv_t1 ... with lr_mult 0, no prefix."""
    result = draw_net_file(shared_path("seedrepo", "mnist", "ts_lenet.prototxt"), tmp_path / "s.dot", phase="TRAIN")
    assert result.teacher == ["conv_t1", "pool_t1", "conv_t2", "pool_t2", "ip_t1", "relu_t1", "ip_t2", "sf_t1"]
    assert result.frozen == ["conv_t1", "conv_t2", "ip_t1", "ip_t2"]


def test_command_line(tmp_path, capsys):
    out = tmp_path / ("n.svg" if HAS_DOT else "n.dot")
    assert draw_main([str(TEACHER_STUDENT), str(out), "--set", "data=dummy", "--phase", "TRAIN"]) == 0
    assert out.stat().st_size > 1000
    bad = shared_path("seedrepo", "imagenet", "alexnet-VGG", "ts_vgg16_train_val.prototxt")
    assert draw_main([str(bad), str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert "ts_vgg16_train_val.prototxt:368" in err and "Traceback" not in err


def test_draw_tool_in_a_fresh_process_renders_embed_net(tmp_path):
    """tools/draw_net.py renders the teacher-student template before anything has built a net: embed_net must
    find the layer types on its own (it once stopped with 'import pipeline.net.layers first')."""
    import subprocess
    import sys

    out = tmp_path / "ts.dot"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "draw_net.py"),
            str(ROOT / "prototxt" / "teacher_student.prototxt"),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "t_conv1" in out.read_text()
