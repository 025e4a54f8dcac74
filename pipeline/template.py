"""Jinja templates for net and solver prototxts.

Every prototxt goes through here first. A plain Caffe file has no `{{`, `{%` or `{#` and renders to itself.
Variables come from `--set name=value` and from defaults inside the template
(`{% set lr = lr | default(0.01) %}`). `{% include %}` and `{% import %}` find files beside the template
and in the project's `prototxt/` folder.
"""

from __future__ import annotations

import ast
import functools
import traceback
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from pipeline.errors import TemplateError

PROJECT_PROTOTXT_DIR = Path(__file__).resolve().parent.parent / "prototxt"


def parse_assignments(items: list[str] | None) -> dict[str, object]:
    """`["lr=0.1", "name=vgg", "sizes=[1,2]"]` to a dict; numbers, booleans and lists become Python values."""
    variables: dict[str, object] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise TemplateError(f"--set expects name=value, got {item!r}")
        variables[name.strip()] = _literal(text.strip())
    return variables


def _literal(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _environment(search_dirs: list[Path]) -> SandboxedEnvironment:
    loader = jinja2.FileSystemLoader([str(d) for d in search_dirs])
    return SandboxedEnvironment(
        loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


def render_text(text: str, variables: dict | None = None, path: str = "<string>") -> str:
    """Render template text. `path` names the file in errors and is where includes are looked up first."""
    here = Path(path).resolve().parent if path != "<string>" else Path.cwd()
    env = _environment([here, PROJECT_PROTOTXT_DIR])
    # Imported here: compose renders the embedded template through this module.
    from pipeline.compose import embed_net

    env.globals["embed_net"] = functools.partial(embed_net, search_from=path)
    env.globals["fail"] = _fail
    try:
        template = env.from_string(text)
        template.filename = path
        return template.render(**(variables or {}))
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or path
        raise TemplateError(f"{where}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"{path}: included template '{exc.name}' not found (looked in {here})") from None
    except jinja2.UndefinedError as exc:
        file, line = _template_location(exc, path)
        hint = " (pass it with --set name=value or give it a default in the template)"
        raise TemplateError(f"{file}:{line}: undefined template variable: {exc.message}{hint}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"{path}: template did something unsafe: {exc}") from None
    except TemplateError as exc:
        if str(exc).startswith(("/", path)):
            raise
        file, line = _template_location(exc, path)
        raise TemplateError(f"{file}:{line}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, KeyError, IndexError, AttributeError) as exc:
        file, line = _template_location(exc, path)
        raise TemplateError(f"{file}:{line}: {type(exc).__name__}: {exc}") from None


def _template_location(exc: BaseException, path: str) -> tuple[str, object]:
    # Jinja rewrites tracebacks so that template frames carry the template's own file name and line.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.endswith(".py")]
    if frames:
        return frames[-1].filename, frames[-1].lineno
    return path, "?"


def _fail(message: str):
    """`{{ fail("data must be lmdb, dummy, hdf5 or input") }}`: a template's own error, with its line."""
    raise TemplateError(message)


def render_file(path: str | Path, variables: dict | None = None) -> str:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    return render_text(text, variables, str(path))
