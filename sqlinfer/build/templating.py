"""Rendering a node's SQL file: a sandboxed Jinja environment with `ref`, `source`, `config`, `var`,
`is_incremental`, `this`, the model function names, and the project's macros.

Dependencies are captured while rendering (each `ref()`/`source()` call is recorded), not by
searching the text. Errors name the file and the line of the template.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from sqlinfer.errors import TemplateError

MATERIALIZATIONS = ("view", "table", "incremental")
CONFIG_KEYS = ("materialized", "unique_key", "partition_by", "file_format")
TABLE_FORMATS = ("parquet", "orc", "json", "csv", "delta", "iceberg")


class SqlLiteral:
    """A `var()` value: renders as a safely quoted SQL literal; ``.raw`` is the value itself.

    Spark SQL processes backslash escapes in string literals, so both ``\\`` and ``'`` are escaped:
    ``x' OR '1'='1`` and ``ends with \\`` stay one literal each.
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
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(literal(v) for v in value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


@dataclass
class NodeConfig:
    materialized: str = "view"
    unique_key: str | None = None
    partition_by: tuple[str, ...] = ()
    file_format: str = "parquet"


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
        if "materialized" in kwargs:
            if kwargs["materialized"] not in MATERIALIZATIONS:
                raise _RenderError(f"config(): materialized must be one of {', '.join(MATERIALIZATIONS)}",
                                     "sql.bad_config")
            cfg.materialized = kwargs["materialized"]
        if "unique_key" in kwargs:
            cfg.unique_key = str(kwargs["unique_key"])
        if "partition_by" in kwargs:
            value = kwargs["partition_by"]
            cfg.partition_by = (value,) if isinstance(value, str) else tuple(value)
        if "file_format" in kwargs:
            if kwargs["file_format"] not in TABLE_FORMATS:
                raise _RenderError(f"config(): file_format must be one of {', '.join(TABLE_FORMATS)}",
                                     "sql.bad_config")
            cfg.file_format = kwargs["file_format"]
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


def _traceback_line(tb: TracebackType | None, path: Path) -> int | None:
    """The template line where an error was raised. Jinja rewrites tracebacks so that frames of
    template code carry the template's own line numbers."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = template_line(tb.tb_frame) or tb.tb_lineno
        tb = tb.tb_next
    return line


class Renderer:
    """A sandboxed Jinja environment over the project's SQL and macros folders."""

    def __init__(self, sql_dir: Path, macros_dir: Path) -> None:
        search = [str(sql_dir)] + ([str(macros_dir)] if macros_dir.is_dir() else [])
        self.env = SandboxedEnvironment(loader=jinja2.FileSystemLoader(search), undefined=jinja2.StrictUndefined,
                                        autoescape=False, keep_trailing_newline=True)
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
            raise TemplateError(str(exc), code=exc.code, path=path,
                                line=_traceback_line(exc.__traceback__, path)) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"undefined in template: {exc.message}", code="sql.undefined", path=path,
                                line=_traceback_line(exc.__traceback__, path)) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"not allowed in templates: {exc}", code="sql.sandbox", path=path,
                                line=_traceback_line(exc.__traceback__, path)) from None
        return recorder.rendered


_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.)*'", re.S)


def called_functions(sql: str, names: set[str]) -> set[str]:
    """Which of ``names`` the SQL calls (outside comments and string literals)."""
    code = _COMMENT.sub(" ", sql)
    return {name for name in names if re.search(rf"(?<![\w.`]){re.escape(name)}\s*\(", code, re.I)}
