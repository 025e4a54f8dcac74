"""The command lines behind tools/parse_log.py, tools/plot_training_log.py and tools/draw_net.py.

Each `main(argv) -> exit status` prints our errors as one line on stderr, never a traceback:
0 done (warnings on stderr), 1 nothing usable in the input, 2 usage or unreadable file.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import PipelineError


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None):
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _warn(prog: str, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)


def parse_log_main(argv: list[str] | None = None) -> int:
    from pipeline.viz.parse_log import parse_log

    parser = argparse.ArgumentParser(
        prog="parse_log.py",
        description="Caffe-format training log to CSV tables <log>.train and <log>.test (and JSON) in OUTDIR.",
    )
    parser.add_argument("logfile", help="training log (Caffe's or ours, glog format)")
    parser.add_argument("output_dir", help="where to write <log name>.train / .test (and .json)")
    parser.add_argument("--json", action="store_true", help="also write <log name>.json (both tables + metadata)")
    parser.add_argument("--compat", choices=["bvlc"], default=None, help="reproduce BVLC parse_log.py's tables")
    parser.add_argument("--delimiter", default=",", help="CSV column separator (default ',')")
    parser.add_argument("--quiet", action="store_true", help="do not list the files written")
    args = _parse(parser, argv)
    if isinstance(args, int):
        return 0 if args == 0 else 2
    try:
        log = parse_log(args.logfile, compat=args.compat)
    except PipelineError as exc:
        print(f"parse_log.py: {exc}", file=sys.stderr)
        return 2
    _warn("parse_log.py", log.warnings)
    try:
        written = log.write_csv(args.output_dir, args.delimiter)
        if args.json:
            from pathlib import Path

            written.append(log.write_json(Path(args.output_dir) / f"{Path(args.logfile).name}.json"))
    except OSError as exc:
        print(f"parse_log.py: cannot write to {args.output_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for path in written:
            print(f"Wrote {path}")
    if log.empty:
        print(f"parse_log.py: nothing to tabulate in {args.logfile}", file=sys.stderr)
        return 1
    return 0


def plot_main(argv: list[str] | None = None) -> int:
    from pipeline.viz.plot import KINDS, plot_logs

    parser = argparse.ArgumentParser(
        prog="plot_training_log.py",
        description="Training curves (loss, accuracy, learning rate) of one or more runs, overlaid, as PNG/SVG.",
    )
    parser.add_argument("logs", nargs="+", help="training logs (Caffe's or ours)")
    parser.add_argument("-o", "--output", action="append", required=True, help="image file .png or .svg (repeat)")
    parser.add_argument("--label", action="append", default=None, help="legend label per log, in order")
    parser.add_argument("--x", choices=["iters", "seconds"], default="iters", help="horizontal axis")
    parser.add_argument("--kind", default=",".join(KINDS), help=f"panels, comma-separated from {','.join(KINDS)}")
    parser.add_argument("--normalise", "--normalize", action="store_true", help="divide each loss by its first value")
    parser.add_argument("--phase", choices=["train", "test", "both"], default="both", help="which series")
    parser.add_argument("--outputs", default=None, help="only these net outputs (comma-separated names)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--logy", action="store_true", help="logarithmic loss axis")
    args = _parse(parser, argv)
    if isinstance(args, int):
        return 0 if args == 0 else 2
    kinds = [k.strip() for k in args.kind.split(",") if k.strip()]
    try:
        result = plot_logs(
            args.logs,
            args.output,
            labels=args.label,
            x=args.x,
            kinds=kinds,
            normalise=args.normalise,
            phases=("train", "test") if args.phase == "both" else (args.phase,),
            only=args.outputs.split(",") if args.outputs else None,
            title=args.title,
            logy=args.logy,
        )
    except (PipelineError, ValueError) as exc:
        print(f"plot_training_log.py: {exc}", file=sys.stderr)
        return 2
    _warn("plot_training_log.py", result.warnings)
    for path in result.files:
        print(f"Wrote {path}")
    return 0 if result.series else 1


def draw_main(argv: list[str] | None = None) -> int:
    from pipeline.text.template import parse_assignments
    from pipeline.viz.draw import DrawError, draw_net_file

    parser = argparse.ArgumentParser(
        prog="draw_net.py", description="A net prototxt (or Jinja template) drawn as a graph (graphviz)."
    )
    parser.add_argument("net", help="net prototxt")
    parser.add_argument("output", help="image file: .png, .svg, .pdf or .dot (the graphviz source only)")
    parser.add_argument("--rankdir", choices=["LR", "TB", "BT", "RL"], default="LR", help="direction of the graph")
    parser.add_argument("--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL", help="layers of this phase")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    parser.add_argument("--teacher-prefix", default="t_", help="name prefix of teacher layers (default t_)")
    parser.add_argument("--no-shapes", action="store_true", help="do not build the net for blob shapes")
    args = _parse(parser, argv)
    if isinstance(args, int):
        return 0 if args == 0 else 2
    try:
        result = draw_net_file(
            args.net,
            args.output,
            variables=parse_assignments(args.set),
            rankdir=args.rankdir,
            phase=args.phase,
            teacher_prefix=args.teacher_prefix,
            shapes=not args.no_shapes,
        )
    except DrawError as exc:
        print(f"draw_net.py: {exc}", file=sys.stderr)
        return 3
    except (PipelineError, OSError) as exc:
        print(f"draw_net.py: {exc}", file=sys.stderr)
        return 2
    _warn("draw_net.py", result.warnings)
    print(f"Wrote {result.output}")
    return 0
