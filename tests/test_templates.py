"""Jinja templates: variables, defaults, loops, includes/macros, strict undefined, sandboxing."""

import pytest

from pipeline.errors import TemplateError
from pipeline.text.template import parse_assignments, render_file, render_text


def test_plain_prototxt_renders_to_itself():
    text = 'layer { name: "a" type: "ReLU" bottom: "x" top: "x" }\n'
    assert render_text(text) == text


def test_variables_defaults_and_loops():
    text = "{% set n = n | default(2) %}{% for i in range(n) %}x{{ i }} {% endfor %}lr={{ lr }}"
    assert render_text(text, {"lr": 0.1}) == "x0 x1 lr=0.1"
    assert render_text(text, {"lr": 0.1, "n": 3}) == "x0 x1 x2 lr=0.1"


def test_set_assignments_are_typed():
    values = parse_assignments(["a=3", "b=0.5", "c=true", "d=vgg", "e=[1, 2]"])
    assert values == {"a": 3, "b": 0.5, "c": True, "d": "vgg", "e": [1, 2]}
    with pytest.raises(TemplateError, match="name=value"):
        parse_assignments(["novalue"])


def test_undefined_variable_names_it_and_the_line(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "x"\n\nlayer { name: "{{ missing_var }}" }\n')
    with pytest.raises(TemplateError) as info:
        render_file(path)
    message = str(info.value)
    assert "missing_var" in message and f"{path}:3" in message


def test_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text("a\nb {% for x in %}\n")
    with pytest.raises(TemplateError, match=r"bad.prototxt:2"):
        render_file(path)


def test_include_and_macros_beside_the_template(tmp_path):
    (tmp_path / "blocks.prototxt").write_text(
        '{% macro conv_relu(name, bottom, n) %}layer { name: "{{ name }}" type: "Convolution" bottom: "{{ bottom }}" '
        'top: "{{ name }}" convolution_param { num_output: {{ n }} kernel_size: 3 } }\n'
        'layer { name: "{{ name }}_relu" type: "ReLU" bottom: "{{ name }}" top: "{{ name }}" }\n{% endmacro %}'
    )
    (tmp_path / "net.prototxt").write_text(
        '{% import "blocks.prototxt" as b %}{{ b.conv_relu("conv1", "data", 8) }}'
        '{{ b.conv_relu("conv2", "conv1", 16) }}'
    )
    text = render_file(tmp_path / "net.prototxt")
    assert text.count('type: "Convolution"') == 2 and 'name: "conv2_relu"' in text


def test_sandbox_blocks_unsafe_attribute_access():
    with pytest.raises(TemplateError, match="unsafe"):
        render_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_missing_include_is_a_clear_error(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('{% include "nowhere.prototxt" %}')
    with pytest.raises(TemplateError, match="nowhere.prototxt"):
        render_file(path)


def test_errors_while_evaluating_name_the_line(tmp_path):
    path = tmp_path / "calc.prototxt"
    path.write_text('name: "x"\nbatch: {{ 1 / 0 }}\n')
    with pytest.raises(TemplateError, match=r"calc.prototxt:2: ZeroDivisionError"):
        render_file(path)


def test_fail_global_reports_the_templates_own_message(tmp_path):
    path = tmp_path / "choice.prototxt"
    path.write_text('{% if data not in ("lmdb", "dummy") %}{{ fail("data must be lmdb or dummy") }}{% endif %}\n')
    with pytest.raises(TemplateError, match=r"choice.prototxt:1: data must be lmdb or dummy"):
        render_file(path, {"data": "csv"})


# ----- which variables a template reads (for --set's rule: template variable, else solver field, else error) --
def test_template_variables_follow_defaults_tests_includes_and_imports(tmp_path):
    import pipeline.text.compose  # noqa: F401  (registers embed_net, a template function and no variable)
    from pipeline.text.template import ANY, template_variables

    (tmp_path / "part.prototxt").write_text("{{ from_include }}")
    (tmp_path / "net.prototxt").write_text(
        '{% import "macros.prototxt" as m %}{% set lr = lr | default(0.1) %}{% if seed is defined %}{% endif %}'
        '{% for h in hidden %}{{ h }}{{ loop.index }}{% endfor %}{% include "part.prototxt" %}'
        '{{ embed_net("lenet.prototxt") }}{{ m.relu("r", "x") }}'
    )
    assert template_variables(tmp_path / "net.prototxt") == {"lr", "seed", "hidden", "from_include"}
    (tmp_path / "plain.prototxt").write_text('name: "x"\n')
    assert template_variables(tmp_path / "plain.prototxt") == set()
    (tmp_path / "dynamic.prototxt").write_text("{% include which %}")
    assert ANY in template_variables(tmp_path / "dynamic.prototxt")  # anything may be read: no check


def test_unused_set_is_an_error_naming_it_with_a_near_miss():
    from pipeline.text.template import ANY, check_variables_used

    check_variables_used({"hidden": [64]}, {"hidden", "batch"}, ["mlp.prototxt"])
    check_variables_used({"anything": 1}, {ANY}, ["x.prototxt"])
    with pytest.raises(TemplateError, match=r"unused --set 'hiden' \(did you mean 'hidden'\?\).*mlp.prototxt"):
        check_variables_used({"hiden": [64]}, {"hidden", "batch"}, ["mlp.prototxt"])
    with pytest.raises(TemplateError, match=r"'zzz': not a template variable of a, b \(they read: batch, hidden\)"):
        check_variables_used({"zzz": 1}, {"hidden", "batch"}, ["a", "b"])


def test_teacher_student_passes_batch_and_the_documented_shared_variables_to_both_nets():
    """prototxt/teacher_student.prototxt documents batch (and data, test_batch, num_classes) as passed to both
    nets: `--set batch=7` sizes the student's data layer; student_vars still wins."""
    from pipeline.text.prototxt import read_net
    from pipeline.text.template import template_variables

    path = "prototxt/teacher_student.prototxt"
    assert {"batch", "test_batch", "num_classes", "data", "data_root"} <= template_variables(path)

    def data_batches(**variables):
        net = read_net(path, {"data": "dummy", **variables})
        return [layer.dummy_data_param.shape[0].dim[0] for layer in net.layer if layer.type == "DummyData"]

    assert data_batches() == [100, 100]  # mlp's own defaults (TRAIN, TEST)
    assert data_batches(batch=7) == [7, 100]
    assert data_batches(batch=7, test_batch=3) == [7, 3]
    assert data_batches(batch=7, student_vars={"batch": 9}) == [9, 100]
    net = read_net(path, {"data": "dummy", "num_classes": 5})
    outputs = {layer.name: layer.inner_product_param.num_output for layer in net.layer}
    assert outputs["logits"] == 5 and outputs["t_ip2"] == 5


def test_unused_set_for_a_composed_net_points_at_its_vars_dicts():
    from pipeline.solvers.nets import read_solver_param

    with pytest.raises(TemplateError, match=r"'hidden'.*go in student_vars or teacher_vars"):
        read_solver_param("solvers/teacher_student_solver.prototxt", {"hidden": [64]}, set_fields=True)
