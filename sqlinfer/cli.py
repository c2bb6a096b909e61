"""The `sqlinfer` command line: parse flags, call the Python API, print. Nothing heavy is imported
at start-up, so `sqlinfer --help` answers at once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from sqlinfer.errors import SqlinferError


def _conf_pairs(values: tuple[str, ...]) -> dict[str, str]:
    conf = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--conf")
        conf[key.strip()] = value.strip()
    return conf


def spark_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--conf", "conf", multiple=True, metavar="KEY=VALUE",
                        help="Spark setting (repeatable); wins over the project file's `spark:`.")(func)
    return click.option("--master", default=None, help="Spark master URL (default: local[*]).")(func)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """SqlinferError (and Spark's own errors, translated) -> one clear line on stderr, exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlinfer.spark_errors import translate

        try:
            return func(*args, **kwargs)
        except SqlinferError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            translated = translate(exc)
            if translated is None:
                raise
            click.echo(f"error: {translated}", err=True)
            sys.exit(1)

    return wrapper


project_argument = click.argument("project", type=click.Path(file_okay=False, path_type=Path), default=".")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sqlinfer")
def main() -> None:
    """sqlinfer: deep-learning models as Spark SQL functions, and SQL projects that build prediction tables."""


@main.command()
@project_argument
@user_errors
def models(project: Path) -> None:
    """List each model's SQL function with its input and return type (weights are checked)."""
    from sqlinfer.project import Project

    loaded = Project.load(project)
    rows = [(m.plan.udf_name, m.plan.decl.flavor, f"{m.plan.decl.input} ({m.plan.decl.input_type})",
             m.plan.decl.return_type, m.plan.fingerprint[:12]) for m in loaded.resolved]
    click.echo(format_table(["function", "flavor", "input", "returns", "fingerprint"], rows))


@main.command()
@project_argument
@click.argument("query")
@click.option("--limit", default=20, show_default=True, help="Rows to print (ignored with --output).")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write all rows to a .parquet, .csv or .json file instead of printing.")
@spark_options
@user_errors
def sql(project: Path, query: str, limit: int, output: Path | None, master: str | None,
        conf: tuple[str, ...]) -> None:
    """Run QUERY with the project's model functions and sources registered."""
    from sqlinfer.output import write_single_file
    from sqlinfer.project import Project

    loaded = Project.load(project)
    spark = loaded.session(master, _conf_pairs(conf))
    loaded.register(spark)
    frame = spark.sql(query)
    if output is not None:
        count = write_single_file(frame, output)
        click.echo(f"wrote {count} rows to {output}")
        return
    rows = frame.limit(limit + 1).collect()
    click.echo(format_table(frame.columns, [tuple(r) for r in rows[:limit]]))
    more = " (more rows not shown; raise --limit or use --output)" if len(rows) > limit else ""
    click.echo(f"{min(len(rows), limit)} rows{more}")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if hasattr(value, "asDict"):
        return "{" + ", ".join(f"{k}: {_cell(v)}" for k, v in value.asDict().items()) + "}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        items = [_cell(v) for v in value[:8]]
        return "[" + ", ".join(items) + (", ..." if len(value) > 8 else "") + "]"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def format_table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
