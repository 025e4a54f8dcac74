"""Jinja templates for net and solver prototxts.

Every prototxt goes through here first. A plain Caffe file has no `{{`, `{%` or `{#` and renders to itself.
Variables come from `--set name=value` and from defaults inside the template
(`{% set lr = lr | default(0.01) %}`). `{% include %}` and `{% import %}` find files beside the template
and in the project's `prototxt/` folder.
"""

from __future__ import annotations

import ast
import difflib
import traceback
from collections.abc import Callable
from pathlib import Path

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from pipeline.errors import TemplateError

PROJECT_PROTOTXT_DIR = Path(__file__).resolve().parents[2] / "prototxt"

# Functions that other modules make callable in every template (compose registers `embed_net`): name ->
# factory given the path of the template being rendered. A hook, so that this module imports none of them.
_GLOBAL_HOOKS: dict[str, Callable[[str], object]] = {}


def register_global(name: str, factory: Callable[[str], object]) -> None:
    """Make `name` callable in templates: `factory(path of the template)` gives the function."""
    if name in _GLOBAL_HOOKS and _GLOBAL_HOOKS[name] is not factory:
        raise ValueError(f"template global '{name}' is registered twice")
    _GLOBAL_HOOKS[name] = factory


def parse_assignments(items: list[str] | None) -> dict[str, object]:
    """`["lr=0.1", "name=vgg", "sizes=[1,2]"]` to a dict; numbers, booleans and lists become Python values."""
    variables: dict[str, object] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise TemplateError(f"--set expects name=value, got {item!r}")
        variables[name.strip()] = _literal(text.strip())
    return variables


# In a set of variables a template reads: it includes or imports a template named by a variable, so any name may be.
ANY = "*"


def template_variables(path: str | Path) -> set[str]:
    """The variables a template file reads from the command line: every name it, or any template it includes or
    imports, uses without setting it first (`{% set lr = lr | default(0.01) %}` reads `lr`; `{% if x is
    defined %}` reads `x`). Found statically, so a name read only in a branch not taken counts too. A plain
    prototxt reads none; a template that cannot be parsed, or includes a computed name, reads `ANY`."""
    path = Path(path)
    search = [path.resolve().parent, PROJECT_PROTOTXT_DIR]
    env = _environment(search)
    builtins = set(env.globals) | set(_GLOBAL_HOOKS) | {"fail"}
    names: set[str] = set()
    seen: set[Path] = set()
    pending = [path]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            tree = env.parse(current.read_text())
        except (OSError, jinja2.TemplateSyntaxError):
            return names | {ANY}
        names |= jinja2.meta.find_undeclared_variables(tree) - builtins
        for name in jinja2.meta.find_referenced_templates(tree):
            found = next((d / name for d in search if name is not None and (d / name).is_file()), None)
            if found is None:
                return names | {ANY}
            pending.append(found)
    return names


def check_variables_used(
    variables: dict, used: set[str], templates: list[str], fields: set[str] = frozenset(), field_kind: str = ""
) -> None:
    """`--set` names that no template reads (and, where `fields` are given, that name none of them) are errors,
    with the nearest name a template reads (or a field) as a suggestion."""
    if ANY in used:
        return
    unused = [name for name in variables if name not in used and name not in fields]
    if not unused:
        return
    where = ", ".join(dict.fromkeys(str(t) for t in templates)) or "the templates"
    problems = []
    for name in unused:
        close = difflib.get_close_matches(name, sorted(used | set(fields)), n=1, cutoff=0.7)
        problems.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    nor = f" nor a {field_kind} field" if field_kind else ""
    read = ", ".join(sorted(used)[:40]) + (", ..." if len(used) > 40 else "") if used else "no variables"
    names = ", ".join(problems)
    # teacher_student.prototxt's nets take their own variables as dicts: `--set 'student_vars={"hidden":[64]}'`.
    nested = sorted(name for name in used if name.endswith("_vars"))
    hint = f"; an embedded net's own variables go in {' or '.join(nested)}" if nested else ""
    raise TemplateError(f"unused --set {names}: not a template variable of {where}{nor} (they read: {read}){hint}")


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
    for name, factory in _GLOBAL_HOOKS.items():
        env.globals[name] = factory(path)
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
