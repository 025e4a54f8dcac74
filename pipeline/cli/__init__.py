"""The `caffe`-style command line: `python -m pipeline <verb> [flags]`, one module per verb.

Verbs register with `@command("name")` and receive the parsed arguments; errors of ours (PipelineError)
are printed as one clear line with exit status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError
from pipeline.registry import Registry

#: verb -> run(args) -> int; its help text is the function's `help` attribute.
COMMANDS: Registry[Callable] = Registry("command")


def command(name: str, help: str):
    """Decorator for `run(args) -> int`; the function's `add_arguments(parser)` attribute adds its flags."""

    def decorate(run):
        run.help = help
        return COMMANDS.register(name)(run)

    return decorate


def _load_commands() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(prog="caffe-pipeline", description="Caffe's command line, on PyTorch.")
    verbs = parser.add_subparsers(dest="verb", metavar="{" + ",".join(COMMANDS.keys()) + "}")
    for name, run in COMMANDS.items():
        help_text = run.help
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        # Looked up now, not at decoration: modules attach `run.add_arguments` after the decorator ran.
        getattr(run, "add_arguments", lambda parser: None)(sub)
        if name in ("train", "test", "time"):
            sub.add_argument(
                "--caffe-blas",
                action="store_true",
                help="reproduce BVLC Caffe's CPU float32 arithmetic bit for bit (its OpenBLAS calls; slower); "
                "also CAFFE_EXACT_BLAS=1",
            )
        sub.set_defaults(run=run)
    return parser


def caffe_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Caffe's single-dash flags (`-solver x`, `-gpu=0`, as gflags takes them) as ours: `-name` or `-name=value`
    becomes `--name` where the verb has that flag. Anything else stays, so `-1` is still a (negative) value and
    `-h` is still help; nothing after `--` changes."""
    verbs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    index = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if verbs is None or index is None or argv[index] not in verbs.choices:
        return list(argv)
    known = set(verbs.choices[argv[index]]._option_string_actions)
    out = list(argv[: index + 1])
    rest = iter(argv[index + 1 :])
    for arg in rest:
        if arg == "--":
            out += [arg, *rest]
            break
        name, sep, value = arg.partition("=")
        if not arg.startswith("--") and len(name) > 2 and "-" + name in known:
            arg = "-" + name + sep + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(caffe_flags(parser, sys.argv[1:] if argv is None else argv))
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return run_guarded(args.run, args)


def run_guarded(run: Callable, args, program: str | None = None) -> int:
    """Run a verb or tool: our errors become one line on stderr and exit status 1, Ctrl-C exit status 130."""
    try:
        with contextlib.ExitStack() as scope:
            if getattr(args, "caffe_blas", False):
                from pipeline.exact.caffe_blas import exact_blas

                scope.enter_context(exact_blas(True))  # for this verb only: `main` may be called again
            return int(run(args) or 0)
    except PipelineError as exc:
        print(f"{program + ': ' if program else ''}error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_net_arguments(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    """Flags shared by the verbs that build a net, with Caffe's names."""
    parser.add_argument("--model", required=model_required, help="net prototxt (may be a Jinja template)")
    parser.add_argument("--weights", default="", help="comma-separated .caffemodel/.caffemodel.h5 files to load")
    parser.add_argument("--phase", default=None, choices=["TRAIN", "TEST"], help="network phase")
    parser.add_argument("--level", type=int, default=0, help="network level")
    parser.add_argument("--stage", default="", help="comma-separated network stages")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    parser.add_argument("--gpu", default=None, help="GPU id to run on ('all' = first); CPU when absent")
