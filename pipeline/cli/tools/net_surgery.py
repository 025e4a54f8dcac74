"""Net surgery on a caffemodel by layer name: rename, copy, drop, keep, prefix, merge, re-initialise, save.

    tools/net_surgery.py --weights vgg16.caffemodel --rename conv1_1=conv_st_1_1,conv1_2=conv_st_1_2 \\
        --output student_init.caffemodel
    tools/net_surgery.py --weights student.caffemodel --merge teacher.caffemodel:t_ \\
        --model ts_train_val.prototxt --output ts_init.caffemodel
    tools/net_surgery.py --weights src.caffemodel --model new.prototxt --reinit fc8 --output out.caffemodel
    tools/net_surgery.py --weights src.caffemodel --list

Operations apply in this order: --keep, --drop, --rename, --copy, --prefix, --merge, --reinit. With --model the
result is copied into that net by name (every shape checked) and the whole net is saved, as a pycaffe script's
`net.save()` would; without it a weights-only caffemodel is written. `.h5` outputs use Caffe's HDF5 layout. Blobs
are written in the shapes the layers' blobs have, as net.save() writes them: an old (V0/V1) file's legacy 4-D
shapes are upgraded ([1, 1, 500, 800] -> [500, 800] for an InnerProduct weight). The source may be any weights
file (caffemodel, Caffe HDF5, safetensors, torch state dict, .npz), recognised by content.

Exit status: 0 written, 1 bad input (nothing written).
"""

import argparse
import sys

from pipeline.cli import run_guarded
from pipeline.errors import PipelineError


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        required=True,
        help="source weights: .caffemodel (any version), .caffemodel.h5, .safetensors, .pt or .npz",
    )
    parser.add_argument("--output", default=None, help="where to write the result")
    parser.add_argument("--model", default=None, help="target net prototxt: save the whole net filled by name")
    parser.add_argument("--keep", action="append", default=[], help="keep only these layers (names or globs)")
    parser.add_argument("--drop", action="append", default=[], help="drop these layers (names or globs)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW,...", help="rename layers")
    parser.add_argument("--copy", action="append", default=[], metavar="SRC=DST,...", help="duplicate layers")
    parser.add_argument("--prefix", default="", help="prefix every layer name (e.g. t_ for a teacher)")
    parser.add_argument(
        "--merge", action="append", default=[], metavar="FILE[:PREFIX]", help="add another file's layers"
    )
    parser.add_argument("--reinit", action="append", default=[], help="layers re-initialised from --model's fillers")
    parser.add_argument("--seed", type=int, default=1701, help="seed of --model's fillers")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    parser.add_argument("--list", action="store_true", help="print the layers and blob shapes of the result")
    return parser.parse_args(argv)


def _names(items):
    return [n.strip() for item in items for n in item.split(",") if n.strip()]


def run(args) -> int:
    from pipeline.glog import setup_logging
    from pipeline.net import build_net
    from pipeline.text.template import parse_assignments
    from pipeline.transfer import surgery

    setup_logging()
    weights = surgery.read_weights(args.weights)
    if args.keep:
        weights = surgery.keep(weights, _names(args.keep))
    if args.drop:
        weights = surgery.drop(weights, _names(args.drop))
    if args.rename:
        weights = surgery.rename(weights, surgery.parse_map(args.rename))
    if args.copy:
        weights = surgery.copy(weights, surgery.parse_map(args.copy))
    if args.prefix:
        weights = surgery.add_prefix(weights, args.prefix)
    for item in args.merge:
        path, _, prefix = item.partition(":")
        weights = surgery.merge(weights, surgery.add_prefix(surgery.read_weights(path), prefix))
    net = None
    if args.model:
        net = build_net(args.model, "TRAIN", parse_assignments(args.set), seed=args.seed)
    if args.reinit:
        if net is None:
            raise PipelineError("--reinit needs --model (the fillers come from the net prototxt)")
        weights = surgery.reinit(weights, net, _names(args.reinit))
    if args.list or not args.output:
        for name, blobs in weights.items():
            print(f"{name}: {', '.join(str(list(b.shape)) for b in blobs)}")
    if args.output:
        report = surgery.save_weights(weights, args.output, net)
        if report is not None:
            print(f"copied {len(report.copied)} layers into net '{net.name}'")
            if report.ignored:
                print(f"not in the net (left out): {', '.join(report.ignored)}")
            if report.missing:
                print(f"net layers left at their fillers: {', '.join(report.missing)}")
        print(f"wrote {args.output} ({len(weights)} layers)")
    return 0


def main(argv=None) -> int:
    return run_guarded(run, parse_args(argv), "net_surgery")


if __name__ == "__main__":
    sys.exit(main())
