"""`convert`: a prototxt and its weights to ONNX, safetensors, a torch state dict (pt), a torch.export program
(pt2), caffemodel or Caffe HDF5, with a summary of the net: layers, parameter counts, output shapes and the
expected preprocessing.

    python -m pipeline convert --model deploy.prototxt --weights x.caffemodel --to onnx [--out path]

writes x.onnx in the current folder unless --out says where, and never over one of its inputs. safetensors and
pt files are keyed "<layer>.<blob name>" (conv1.weight, conv1.bias), the keys of the exported module's
state_dict(); a pt file is read back with torch.load(path, weights_only=True).
"""

from __future__ import annotations

from pipeline.cli import command
from pipeline.errors import PipelineError
from pipeline.export.convert import FORMATS, ConvertRequest, convert, format_summary
from pipeline.export.onnx_io import DEFAULT_OPSET
from pipeline.glog import setup_logging
from pipeline.text.template import parse_assignments


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="net prototxt: deploy, or train/test (made into a deploy net)")
    parser.add_argument(
        "--weights",
        required=True,
        help="comma-separated weights files (caffemodel, Caffe HDF5, safetensors, torch state dict or .npz: "
        "recognised by content)",
    )
    parser.add_argument("--to", required=True, choices=list(FORMATS), help="output format")
    parser.add_argument(
        "--out",
        default=None,
        help="output path (default: in the current folder, the first weights file's name with the format's suffix)",
    )
    parser.add_argument(
        "--data-prototxt",
        default=None,
        help="train/test prototxt whose data layer tells the preprocessing (mean, scale, crop)",
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="BLOB=N,C,H,W",
        help="shape of an input blob (needed when --model reads its data from a database)",
    )
    parser.add_argument(
        "--outputs",
        default="",
        help="onnx/pt2: comma-separated blobs to output instead of the net's outputs (e.g. features)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17 or later)")
    parser.add_argument("--no-verify", action="store_true", help="ONNX: skip the onnxruntime comparison")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="template variable")


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise PipelineError(f"--input-shape expects BLOB=N,C,H,W with positive dims, got {item!r}")
        shapes[name] = shape
    return shapes


def run(args) -> int:
    setup_logging()
    request = ConvertRequest(
        model=args.model,
        weights=[w for w in args.weights.split(",") if w],
        to=args.to,
        out=args.out,
        data_prototxt=args.data_prototxt,
        variables=parse_assignments(args.set),
        input_shapes=parse_shapes(args.input_shape),
        opset=args.opset,
        verify=not args.no_verify,
        outputs=[b for b in args.outputs.split(",") if b],
    )
    print(format_summary(convert(request)), flush=True)
    return 0


# The registry reads `add_arguments` when the command is registered, so attach it first.
run.add_arguments = add_arguments
SUMMARY = "convert a model to onnx, safetensors, pt (torch state dict), pt2 (torch.export), caffemodel or h5"
command("convert", SUMMARY)(run)
