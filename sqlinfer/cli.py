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
from sqlinfer.text_table import format_table


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


def parse_vars(text: str | None) -> dict[str, Any]:
    """--vars: a YAML (or JSON) mapping, e.g. '{eval_split: train, min_score: 0.5}'."""
    if not text:
        return {}
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"not YAML: {exc}", param_hint="--vars") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a mapping like '{name: value}'", param_hint="--vars")
    return value


vars_option = click.option("--vars", "variables", default=None, metavar="YAML",
                           help="Values for var(), e.g. '{eval_split: train}'; win over the project file.")


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """SqlinferError (and Spark's own errors, translated) -> one clear line on stderr, exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlinfer.runtime.spark_errors import translate

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
             m.plan.decl.return_type, m.plan.fingerprint[:12]) for m in loaded.resolve_models()]
    click.echo(format_table(["function", "flavor", "input", "returns", "fingerprint"], rows))


@main.command()
@project_argument
@click.argument("query")
@click.option("--limit", default=20, show_default=True, help="Rows to print (ignored with --output).")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write all rows to a .parquet, .csv or .json file instead of printing.")
@vars_option
@spark_options
@user_errors
def sql(project: Path, query: str, limit: int, output: Path | None, variables: str | None, master: str | None,
        conf: tuple[str, ...]) -> None:
    """Run QUERY with the project's model functions, sources and view nodes registered."""
    from sqlinfer.project import Project
    from sqlinfer.runtime.export import write_single_file
    from sqlinfer.runtime.spark_errors import translate

    loaded = Project.load(project, parse_vars(variables))
    spark = loaded.start(master, _conf_pairs(conf))
    loaded.register(spark)
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    try:
        frame = spark.sql(query)
        if output is not None:
            count = write_single_file(frame, output)
            click.echo(f"wrote {count} rows to {output}")
            return
        rows = frame.limit(limit + 1).collect()
    except Exception as exc:
        # Translated here, where the project's model functions are known: an unknown function
        # is then reported with the closest of them.
        translated = translate(exc, [m.plan.udf_name for m in loaded.resolve_models()])
        if translated is None:
            raise
        raise translated from None
    click.echo(format_table(frame.columns, [tuple(r) for r in rows[:limit]]))
    more = " (more rows not shown; raise --limit or use --output)" if len(rows) > limit else ""
    click.echo(f"{min(len(rows), limit)} rows{more}")


selection_options = [
    click.option("--select", "-s", "select", multiple=True, metavar="SELECTOR",
                 help="Nodes to build: NAME, +NAME (with ancestors), NAME+ (with descendants); repeatable."),
    click.option("--exclude", multiple=True, metavar="SELECTOR", help="Nodes to leave out (same syntax)."),
]


def with_selection(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(selection_options):
        func = option(func)
    return func


@main.command()
@project_argument
@with_selection
@click.option("--full-refresh", is_flag=True, help="Rebuild incremental tables from scratch.")
@vars_option
@spark_options
@user_errors
def build(project: Path, select: tuple[str, ...], exclude: tuple[str, ...], full_refresh: bool,
          variables: str | None, master: str | None, conf: tuple[str, ...]) -> None:
    """Compile the project's SQL nodes, then materialize them in dependency order."""
    from sqlinfer.project import Project

    loaded = Project.load(project, parse_vars(variables))
    loaded.nodes().load()  # template errors surface before Spark starts
    spark = loaded.start(master, _conf_pairs(conf))
    result = loaded.build(spark, select, exclude, full_refresh, report=click.echo)
    click.echo(f"Results: {loaded.target / 'run_results.json'}")
    sys.exit(0 if result.success else 1)


@main.command("compile")
@project_argument
@vars_option
@spark_options
@user_errors
def compile_command(project: Path, variables: str | None, master: str | None, conf: tuple[str, ...]) -> None:
    """Render every node to target/compiled/ and check it with Spark's analyzer (no model runs)."""
    from sqlinfer.project import Project

    loaded = Project.load(project, parse_vars(variables))
    loaded.nodes().load()
    spark = loaded.start(master, _conf_pairs(conf))
    manifest = loaded.compile(spark)
    click.echo(f"Compiled {len(manifest.nodes)} nodes to {loaded.target / 'compiled'}; all pass Spark's analyzer.")


@main.command("ls")
@project_argument
@with_selection
@user_errors
def ls_command(project: Path, select: tuple[str, ...], exclude: tuple[str, ...]) -> None:
    """List the nodes in build order with materialization, dependencies and model functions."""
    from sqlinfer.project import Project

    loaded = Project.load(project)
    manifest = loaded.nodes().load()
    rows = [(n.name, n.config.materialized, ", ".join(sorted(n.rendered.refs)) or "-",
             ", ".join(sorted(n.rendered.sources)) or "-", ", ".join(sorted(n.udfs)) or "-",
             str(n.path.relative_to(loaded.root)))
            for n in manifest.order(select, exclude)]
    click.echo(format_table(["node", "materialized", "refs", "sources", "functions", "file"], rows))


@main.command()
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to create it (default: ./NAME).")
@user_errors
def init(name: str, directory: Path | None) -> None:
    """Create a new project that builds out of the box (a small random-init model over sample images)."""
    from sqlinfer.build.scaffold import create_project

    root = create_project(name, directory or Path(name))
    click.echo(f"Created {root}. Next: sqlinfer build {root}")


@main.command()
@project_argument
@click.option("--host", default=None,
              help="Address to listen on (default 127.0.0.1: this machine only). Any other address needs "
                   "authentication configured, or --insecure-no-auth.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (default 10000; 0 picks a free one and prints it).")
@click.option("--insecure-no-auth", is_flag=True,
              help="Allow a non-loopback --host WITHOUT authentication: anyone who reaches the port can run "
                   "SQL and model code as you. Only for networks you trust completely.")
@spark_options
@user_errors
def serve(project: Path, host: str | None, port: int | None, insecure_no_auth: bool, master: str | None,
          conf: tuple[str, ...]) -> None:
    """Serve the project's model functions, sources and tables to JDBC/Thrift clients (beeline, BI tools,
    PyHive) until Ctrl-C or SIGTERM. `--conf hive.server2.KEY=VALUE` sets the server (authentication, TLS,
    http transport; see docs/serve.md), other --conf keys set Spark."""
    from sqlinfer.project import Project
    from sqlinfer.serve.server import serve as serve_project

    serve_project(Project.load(project), host=host, port=port, master=master, conf=_conf_pairs(conf),
                  allow_insecure=insecure_no_auth, echo=click.echo)
