"""Exporting nets: PyTorch (safetensors or torch.save state dicts keyed "<layer>.<blob name>" as the exported module's
state_dict is, a torch.export-able module), ONNX, caffemodel.

    from pipeline.export import DeployModule, export_onnx, export_program, load_safetensors, save_safetensors

    net = Net(read_net("deploy.prototxt"), phase="TEST")
    load_safetensors(net, "model.safetensors")       # or copy_weights(net, "model.caffemodel")
    export_onnx(net, "model.onnx")                   # opset 17, dynamic batch
    program = export_program(net)                    # torch.export.ExportedProgram

The `convert` verb (`python -m pipeline convert`) does all of it from files: see pipeline/export/convert.py.
"""

from pipeline.export.convert import FORMATS, ConvertRequest, ConvertResult, convert, default_output, format_summary
from pipeline.export.deploy import Preprocessing, build_net_for_weights, deploy_param, preprocessing
from pipeline.export.module import DeployModule, ExportError, export_program
from pipeline.export.onnx_io import DEFAULT_OPSET, Comparison, check_onnx, compare_onnx, export_onnx, run_onnx
from pipeline.export.safetensors_io import (
    load_safetensors,
    net_from_safetensors,
    read_safetensors_metadata,
    save_safetensors,
    save_torch,
    state_dict,
)

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "Comparison",
    "ConvertRequest",
    "ConvertResult",
    "DeployModule",
    "ExportError",
    "Preprocessing",
    "build_net_for_weights",
    "check_onnx",
    "compare_onnx",
    "convert",
    "default_output",
    "deploy_param",
    "export_onnx",
    "export_program",
    "format_summary",
    "load_safetensors",
    "net_from_safetensors",
    "preprocessing",
    "read_safetensors_metadata",
    "run_onnx",
    "save_safetensors",
    "save_torch",
    "state_dict",
]
