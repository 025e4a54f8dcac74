"""The generated protobuf modules must match pipeline/proto/caffe.proto and schedule.proto (`make proto`)."""

import ast
import re
from pathlib import Path

import pytest

from pipeline.proto import caffe_pb2

PROTO_DIR = Path(__file__).resolve().parents[1] / "pipeline" / "proto"


def _embedded_descriptor(module_text: str) -> bytes:
    """The serialized FileDescriptorProto a generated *_pb2.py registers (independent of protoc's banner)."""
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", module_text, re.S)
    assert match, "no AddSerializedFile call in the generated module"
    return ast.literal_eval(match.group(1))


@pytest.mark.parametrize("name", ["caffe", "schedule"])
def test_generated_module_is_up_to_date_with_the_schema(tmp_path, name):
    protoc = pytest.importorskip("grpc_tools.protoc")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}", str(PROTO_DIR / f"{name}.proto")])
    assert rc == 0, f"protoc failed on {name}.proto"
    fresh = _embedded_descriptor((tmp_path / f"{name}_pb2.py").read_text())
    committed = _embedded_descriptor((PROTO_DIR / f"{name}_pb2.py").read_text())
    assert fresh == committed, f"pipeline/proto/{name}_pb2.py is out of date with {name}.proto: run `make proto`"


def test_schedule_module_imports_caffe_pb2_from_the_package():
    """`make proto`'s fix-up: protoc writes a top-level `import caffe_pb2`, which only works with pipeline/proto
    on sys.path."""
    text = (PROTO_DIR / "schedule_pb2.py").read_text()
    assert "from pipeline.proto import caffe_pb2 as caffe__pb2" in text and "\nimport caffe_pb2" not in text
    from pipeline.proto import schedule_pb2

    stage = schedule_pb2.Stage.DESCRIPTOR
    assert stage.fields_by_name["solver"].message_type is caffe_pb2.SolverParameter.DESCRIPTOR


@pytest.mark.parametrize(
    "message, field, number",
    [
        ("NetParameter", "layer", 100),
        ("NetParameter", "layers", 2),
        ("LayerParameter", "convolution_param", 106),
        ("LayerParameter", "batch_norm_param", 139),
        ("LayerParameter", "knowledge_distillation_param", 147),
        ("LayerParameter", "clip_param", 148),
        ("SolverParameter", "type", 40),
        ("BlobProto", "shape", 7),
        ("V1LayerParameter", "blobs_lr", 7),
    ],
)
def test_caffe_field_numbers(message, field, number):
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number == number


def test_project_extensions_stay_out_of_caffes_range():
    for field in caffe_pb2.KnowledgeDistillationParameter.DESCRIPTOR.fields:
        assert field.name == "temperature" or field.number >= 1000
