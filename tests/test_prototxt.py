"""Prototxt parsing errors point at file:line:column, the layer, and the nearest valid names."""

import pytest

from pipeline.errors import PrototxtError
from pipeline.proto import caffe_pb2
from pipeline.text.prototxt import parse_text, read_net, read_solver

NET = """name: "n"
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 4 kernal_size: 3 }
}
"""


def test_unknown_field_names_layer_position_and_suggestion():
    with pytest.raises(PrototxtError) as info:
        parse_text(NET, caffe_pb2.NetParameter(), "net.prototxt")
    message = str(info.value)
    assert message.startswith("net.prototxt:7:")
    assert "layer 'conv1'" in message and "kernal_size" in message and "kernel_size" in message


def test_syntax_error_has_line_and_column():
    with pytest.raises(PrototxtError) as info:
        parse_text('name: "n"\nlayer {\n  name: "a"\n  type "ReLU"\n}\n', caffe_pb2.NetParameter(), "x.prototxt")
    assert info.value.line == 4 and info.value.column is not None
    assert str(info.value).startswith("x.prototxt:4:")


def test_unknown_enum_value_lists_valid_values():
    text = 'layer { name: "p" type: "Pooling" pooling_param { pool: MAXIMUM } }'
    with pytest.raises(PrototxtError, match=r"valid values: MAX, AVE, STOCHASTIC"):
        parse_text(text, caffe_pb2.NetParameter())


def test_read_net_and_solver_files(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(
        'name: "{{ name | default(\'tiny\') }}"\ninput: "data"\ninput_dim: 1\ninput_dim: 2\n'
        "input_dim: 3\ninput_dim: 4\n"
    )
    parsed = read_net(net, {"name": "mine"})
    assert parsed.name == "mine"
    assert parsed.layer[0].type == "Input" and list(parsed.layer[0].input_param.shape[0].dim) == [1, 2, 3, 4]
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "net.prototxt"\nbase_lr: {{ lr }}\nlr_policy: "fixed"\n')
    assert read_solver(solver, {"lr": 0.5}).base_lr == 0.5


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="cannot read"):
        read_net(tmp_path / "absent.prototxt")
