"""Net-build errors as a new user meets them: the file:line of the layer at fault, blob names as written, and a
"did you mean" for a misspelt layer type."""

from __future__ import annotations

import re

import pytest

from pipeline.errors import NetBuildError
from pipeline.net import Net, build_net
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import net_from_string
from pipeline.text.source_map import top_level_blocks

HEAD = """name: "t"  # a comment holding layer { and "quotes"
layer {
  name: "data"
  type: "Input"
  top: "data"
  top: "label"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } }
}
"""


def build_error(tmp_path, text: str, name: str = "net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(NetBuildError) as info:
        build_net(str(path))
    return str(info.value)


def test_misspelt_layer_type_names_file_line_and_the_closest_types(tmp_path):
    text = (
        HEAD
        + """layer {
  name: "conv1"  # "}" in a comment
  type: "Convolutoin"
  bottom: "data"
  top: "conv1"
}
"""
    )
    message = build_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'net.prototxt'}:9: layer 'conv1' (Convolutoin): ")
    assert "unknown layer type 'Convolutoin' (did you mean 'Convolution', 'Deconvolution'?)" in message
    assert "Known types: " in message and "InnerProduct" in message


def test_type_suggestions_ignore_case():
    from pipeline.net.layers.registry import closest_types

    assert closest_types("relu")[0] == "ReLU"
    assert closest_types("InnerProdcut") == ["InnerProduct"]
    assert closest_types("Zzzzzz") == []


def test_setup_and_bottom_errors_name_the_line(tmp_path):
    bad_param = HEAD + 'layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" }\n'
    message = build_error(tmp_path, bad_param)
    assert re.match(re.escape(f"{tmp_path / 'net.prototxt'}:9: layer 'ip1' (InnerProduct): "), message), message
    unknown_bottom = HEAD + '\n\nlayer { name: "relu" type: "ReLU" bottom: "nope" top: "r" }\n'
    message = build_error(tmp_path, unknown_bottom, "other.prototxt")
    assert message.startswith(f"{tmp_path / 'other.prototxt'}:11: layer 'relu' (ReLU): unknown bottom blob 'nope'")


KD_NET = """name: "kd"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc8_t" type: "InnerProduct" bottom: "data" top: "fc8_t"
  param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 5 } }
layer { name: "fc8_s" type: "InnerProduct" bottom: "data" top: "fc8_s" inner_product_param { num_output: 4 } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8_s" bottom: "label" top: "accuracy" }
layer {
  name: "kd"
  type: "KnowledgeDistillation"
  bottom: "fc8_s"
  bottom: "fc8_t"
  bottom: "label"
  top: "kd_loss"
  knowledge_distillation_param { temperature: 4 alpha: 0.9 }
}
"""


def test_kd_shape_error_names_the_blobs_as_written_not_their_split_copies(tmp_path):
    # fc8_s feeds Accuracy and KnowledgeDistillation, so the builder reads it through a Split's copies.
    message = build_error(tmp_path, KD_NET, "kd.prototxt")
    assert message == (
        f"{tmp_path / 'kd.prototxt'}:8: layer 'kd' (KnowledgeDistillation): student 'fc8_s' [2, 4] and teacher "
        "'fc8_t' [2, 5] must have the same shape (same number of classes)"
    )
    assert "split" not in message


def test_a_net_built_in_code_keeps_todays_message():
    param = caffe_pb2.NetParameter(name="code")
    layer = param.layer.add(name="relu_in_code_only", type="ReLU")
    layer.bottom.append("missing")
    layer.top.append("r")
    with pytest.raises(NetBuildError) as info:
        Net(param)
    assert str(info.value).startswith("layer 'relu_in_code_only' (ReLU): unknown bottom blob 'missing'")
    assert info.value.location is None


def test_templates_say_the_line_is_the_rendered_texts():
    template = (
        HEAD
        + "{% for i in range(2) %}\n"
        + 'layer { name: "t{{ i }}" type: "TanH" bottom: "{{ "data" if i == 0 else "zz" }}" top: "t{{ i }}" }\n'
        + "{% endfor %}\n"
    )
    with pytest.raises(NetBuildError) as info:
        Net(net_from_string(template, path="tpl.prototxt"))
    assert str(info.value).startswith("tpl.prototxt:12 (line of the text rendered from this template): layer 't1'")
    plain = HEAD + 'layer { name: "t9" type: "TanH" bottom: "zz" top: "t9" }\n'
    with pytest.raises(NetBuildError, match=r"^plain\.prototxt:9: layer 't9' \(TanH\): unknown bottom"):
        Net(net_from_string(plain, path="plain.prototxt"))


def test_v1_nets_are_located_after_their_upgrade(tmp_path):
    text = """name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 1 input_dim: 1
layers {
  name: "ip1" type: INNER_PRODUCT bottom: "data" top: "ip1"
  inner_product_param { num_output: 4 }
}
layers {
  name: "ip2" type: INNER_PRODUCT bottom: "nothere" top: "ip2"
  inner_product_param { num_output: 4 }
}
"""
    message = build_error(tmp_path, text, "v1.prototxt")
    assert message.startswith(f"{tmp_path / 'v1.prototxt'}:8: layer 'ip2' (InnerProduct): unknown bottom blob")


def test_the_file_holding_most_of_the_net_wins(tmp_path):
    # A train and a test file sharing their (bad) layer: each net's error names its own file.
    shared = 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" }\n'
    train = HEAD + shared
    test = HEAD.replace("dim: 2 dim: 3", "dim: 4 dim: 3").replace("dim: 2 }", "dim: 4 }") + "\n" + shared
    (tmp_path / "train.prototxt").write_text(train)
    (tmp_path / "test.prototxt").write_text(test)
    from pipeline.text.prototxt import read_net

    train_param = read_net(tmp_path / "train.prototxt")
    read_net(tmp_path / "test.prototxt")  # read last, as a solver reads its test nets after the train net
    with pytest.raises(NetBuildError, match=re.escape(f"{tmp_path / 'train.prototxt'}:9: layer 'ip'")):
        Net(train_param)


def test_solver_built_nets_are_located(tmp_path):
    from pipeline.solvers.nets import build, collect_nets
    from pipeline.text.prototxt import read_solver

    (tmp_path / "kd.prototxt").write_text(KD_NET)
    (tmp_path / "solver.prototxt").write_text('net: "kd.prototxt"\nbase_lr: 0.1\nmax_iter: 1\n')
    solver = str(tmp_path / "solver.prototxt")
    sources = collect_nets(read_solver(solver), solver)
    with pytest.raises(NetBuildError, match=r"kd\.prototxt:8: layer 'kd' \(KnowledgeDistillation\): student 'fc8_s'"):
        build(sources.train[1], 0, sources.train[0])


def test_block_scan_skips_comments_strings_and_nesting():
    text = """# layer { in a comment
name: "layer {"
layer { name: "a" type: "X" some_param { layer { } } }
  layer: {
    name: 'b}"' # }
  }
layers <
  name: "c"
>
input_shape { dim: 1 }
"""
    assert top_level_blocks(text) == [("layer", 3), ("layer", 4), ("layers", 7)]
