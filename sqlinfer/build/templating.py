"""Rendering a node's SQL file: a sandboxed Jinja environment with `ref`, `source`, `config`, `var`,
`is_incremental`, `this`, the model function names, and the project's macros.

Dependencies are captured while rendering (each `ref()`/`source()` call is recorded), not by
searching the text. Errors name the file and the line of the template.

The sandbox is Jinja's immutable one: no attribute that starts with ``_`` (so no ``__class__``,
``__globals__``, ``__mro__``, name-mangled privates), no unsafe attributes of functions, frames
or generators, ``str.format`` checked the same way, and no changing of lists and dicts in place
(a node cannot change a `var()` value or `udfs` for the nodes rendered after it). Whatever it
refuses is a ``sql.sandbox`` error at the file and line of the expression.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sqlinfer.errors import TemplateError

MATERIALIZATIONS = ("view", "table", "incremental")
CONFIG_KEYS = ("materialized", "unique_key", "partition_by", "file_format", "max_bad_rows", "max_bad_fraction",
               "on_schema_change", "severity")
# dbt's names for what an incremental build does when its SELECT's columns change.
SCHEMA_CHANGES = ("fail", "append_new_columns", "sync_all_columns")
SEVERITIES = ("error", "warn")  # of a singular data test
TABLE_FORMATS = ("parquet", "orc", "json", "csv", "delta", "iceberg")


class SqlLiteral:
    """A `var()` value: renders as a safely quoted SQL literal; ``.raw`` is the value itself.

    Spark SQL processes backslash escapes in string literals, so both ``\\`` and ``'`` are escaped:
    ``x' OR '1'='1`` and ``ends with \\`` stay one literal each. ``${`` is written ``$\\{`` (Spark
    would replace ``${env:HOME}`` with a value of its own), NaN and infinities as casts.
    """

    def __init__(self, value: Any) -> None:
        self.raw = value

    def __str__(self) -> str:
        return literal(self.raw)

    def __html__(self) -> str:
        # Jinja's escape filter must leave a SQL literal as it is (autoescape is off anyway).
        return str(self)


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and not math.isfinite(value):
        # repr() gives nan / inf, which Spark would read as column names.
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return f"CAST('{text}' AS DOUBLE)"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(literal(v) for v in value)
    # Spark substitutes ${name}, ${env:NAME}, ${system:name} in the SQL text before parsing it,
    # string literals included; `$\{` is no reference, and Spark reads `\{` as `{`.
    text = str(value).replace("\\", "\\\\").replace("'", "\\'").replace("${", "$\\{")
    return f"'{text}'"


@dataclass
class NodeConfig:
    materialized: str = "view"
    unique_key: str | None = None
    partition_by: tuple[str, ...] = ()
    file_format: str = "parquet"
    # Bad input rows (NULL from a model function) the node may have before it fails; None: any.
    max_bad_rows: int | None = None
    max_bad_fraction: float | None = None
    on_schema_change: str = "fail"
    severity: str = "error"  # a singular test's (tests/*.sql): error or warn


@dataclass
class Rendered:
    """One node rendered: its SQL, its configuration and what it depends on (with lines)."""

    sql: str
    config: NodeConfig
    refs: dict[str, int] = field(default_factory=dict)  # node name -> first line that refs it
    sources: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderContext:
    """What the templates can see; ``ref``/``source`` map a name to the SQL text that names it."""

    vars: Mapping[str, Any]
    udfs: Mapping[str, str]  # model name -> SQL function name
    ref: Callable[[str], str]
    source: Callable[[str], str]
    this: str = ""
    incremental: bool = False


class _Recorder:
    """Collects what one render calls, with the template line of each call."""

    def __init__(self, path: Path, context: RenderContext) -> None:
        self.path = path
        self.context = context
        self.rendered = Rendered("", NodeConfig())

    def _line(self) -> int | None:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename == str(self.path):
                return template_line(frame)
            frame = frame.f_back
        return None

    def ref(self, name: str) -> str:
        self.rendered.refs.setdefault(name, self._line() or 0)
        return self.context.ref(name)

    def source(self, name: str) -> str:
        self.rendered.sources.setdefault(name, self._line() or 0)
        return self.context.source(name)

    def config(self, **kwargs: Any) -> str:
        unknown = sorted(set(kwargs) - set(CONFIG_KEYS))
        if unknown:
            raise _RenderError(f"config(): unknown argument {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})",
                                 "sql.bad_config")
        cfg = self.rendered.config
        # Keys that take one of a few words: the same check and message for each.
        for key, choices in (("materialized", MATERIALIZATIONS), ("file_format", TABLE_FORMATS),
                             ("on_schema_change", SCHEMA_CHANGES), ("severity", SEVERITIES)):
            if key in kwargs:
                if kwargs[key] not in choices:
                    raise _RenderError(f"config(): {key} must be one of {', '.join(choices)}", "sql.bad_config")
                setattr(cfg, key, kwargs[key])
        if "unique_key" in kwargs:
            cfg.unique_key = str(kwargs["unique_key"])
        if "partition_by" in kwargs:
            value = kwargs["partition_by"]
            cfg.partition_by = (value,) if isinstance(value, str) else tuple(value)
        if "max_bad_rows" in kwargs:
            value = kwargs["max_bad_rows"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _RenderError("config(): max_bad_rows must be a whole number >= 0", "sql.bad_config")
            cfg.max_bad_rows = value
        if "max_bad_fraction" in kwargs:
            value = kwargs["max_bad_fraction"]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise _RenderError("config(): max_bad_fraction must be a number from 0 to 1", "sql.bad_config")
            cfg.max_bad_fraction = float(value)
        return ""

    def var(self, name: str, *default: Any) -> SqlLiteral:
        if name in self.context.vars:
            return SqlLiteral(self.context.vars[name])
        if default:
            return SqlLiteral(default[0])
        raise _RenderError(f"var({name!r}) has no value: set it under `vars:` in the project file, "
                             f"pass --vars, or give a default", "sql.missing_var")


class _RenderError(Exception):
    """Raised by the template functions; :meth:`Renderer.render` locates it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def template_line(frame: Any) -> int | None:
    """The template line of a frame executing Jinja's compiled code for a template."""
    template = frame.f_globals.get("__jinja_template__")
    if template is None:
        return None
    return template.get_corresponding_lineno(frame.f_lineno)


def _located(exc: BaseException, path: Path) -> dict[str, Any]:
    """``path`` and ``line`` for the TemplateError that reports ``exc``."""
    where, line = _traceback_location(exc.__traceback__, path)
    return {"path": where, "line": line}


def _traceback_location(tb: TracebackType | None, path: Path) -> tuple[str, int | None]:
    """The template file and line where an error was raised: the innermost frame of template code
    (a macro's or an included file's own line, not the line that called it), else ``path``. Jinja
    rewrites tracebacks so that frames of template code carry the template's own line numbers."""
    where: tuple[str, int | None] = (str(path), None)
    while tb is not None:
        frame = tb.tb_frame
        # A template's compiled code, or the frame Jinja put in its place (which has the template's line).
        in_template = bool({"__jinja_template__", "__jinja_exception__"} & frame.f_globals.keys())
        if in_template or frame.f_code.co_filename == str(path):
            where = (frame.f_code.co_filename, template_line(frame) or tb.tb_lineno)
        tb = tb.tb_next
    return where


class Renderer:
    """A sandboxed Jinja environment over the project's SQL and macros folders."""

    def __init__(self, sql_dir: Path, macros_dir: Path) -> None:
        search = [str(sql_dir)] + ([str(macros_dir)] if macros_dir.is_dir() else [])
        self.env = ImmutableSandboxedEnvironment(loader=jinja2.FileSystemLoader(search),
                                                 undefined=jinja2.StrictUndefined, autoescape=False,
                                                 keep_trailing_newline=True)
        # Jinja's other globals (range, dict, cycler, joiner, namespace) help build SQL text and
        # expose nothing the sandbox lets through; lorem ipsum does neither.
        self.env.globals.pop("lipsum", None)
        self.macros = sorted(macros_dir.glob("*.sql")) if macros_dir.is_dir() else []

    def render(self, path: Path, relative: str, context: RenderContext) -> Rendered:
        recorder = _Recorder(path, context)
        names: dict[str, Any] = {
            "ref": recorder.ref, "source": recorder.source, "config": recorder.config, "var": recorder.var,
            "is_incremental": lambda: context.incremental, "this": context.this, "udfs": dict(context.udfs),
            **{model: udf for model, udf in context.udfs.items() if model not in ("ref", "source", "config", "var")},
        }
        try:
            for macro_file in self.macros:
                module = self.env.get_template(macro_file.name, globals=names).make_module(names)
                names.update({k: getattr(module, k) for k in dir(module) if not k.startswith("_")})
            template = self.env.get_template(relative, globals=names)
            recorder.rendered.sql = template.render()
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"Jinja syntax error: {exc.message}", code="sql.jinja_syntax",
                                path=exc.filename or path, line=exc.lineno) from None
        except _RenderError as exc:
            raise TemplateError(str(exc), code=exc.code, **_located(exc, path)) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"undefined in template: {exc.message}", code="sql.undefined",
                                **_located(exc, path)) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"not allowed in templates: {exc}", code="sql.sandbox", **_located(exc, path)) from None
        except jinja2.TemplateNotFound as exc:
            # {% include %} / {% import %} of a file that is not there, or of a path with '..' in it.
            raise TemplateError(f"no template {exc.name!r} in the SQL or macros folder", code="sql.unknown_template",
                                **_located(exc, path)) from None
        return recorder.rendered


_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.)*'", re.S)


def called_functions(sql: str, names: set[str]) -> set[str]:
    """Which of ``names`` the SQL calls (outside comments and string literals)."""
    code = _COMMENT.sub(" ", sql)
    return {name for name in names if re.search(rf"(?<![\w.`]){re.escape(name)}\s*\(", code, re.I)}
