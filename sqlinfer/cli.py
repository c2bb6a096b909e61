"""The `sqlinfer` command line: parse flags, call the Python API, print. Nothing heavy is imported
at start-up, so `sqlinfer --help` answers at once.

A failed command prints one line on stderr, ``error: path:line: message [code]``, and exits 1 (2
for a command line click cannot parse): Spark's log lines and Java stack traces go to the
project's ``target/logs/spark.log`` (sqlinfer/runtime/jvm.py), which the line names when the
error came from Spark.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from sqlinfer.errors import BuildError, CommandError, ServeError, SessionError, SqlinferError
from sqlinfer.text_table import format_table

if TYPE_CHECKING:
    from sqlinfer.build.runner import RunResult
    from sqlinfer.project import Project


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
        # PyYAML's text is several lines (the line, a caret under it): its problem fits on one.
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise click.BadParameter(f"not YAML: {problem}", param_hint="--vars") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a mapping like '{name: value}'", param_hint="--vars")
    return value


vars_option = click.option("--vars", "variables", default=None, metavar="YAML",
                           help="Values for var(), e.g. '{eval_split: train}'; win over the project file.")


def error_line(error: SqlinferError, log: Path | None = None) -> str:
    """The one line a failed command prints: ``error: path:line: message [code]``, the message cut
    at its first line break (the rest goes to Spark's log), naming Spark's ``log`` when given."""
    message = next((line.strip() for line in error.message.splitlines() if line.strip()), "")
    where = f"{error.location}: " if error.location else ""
    named = f" (Spark's log: {_shown(log)})" if log is not None else ""
    return f"error: {where}{message}{named} [{error.code}]"


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (``target/logs/spark.log``)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def fail(error: SqlinferError, detail: str = "") -> NoReturn:
    """Print ``error`` as its one line and exit 1. An error from Spark names Spark's log, where its
    detail (Java stack trace, the rest of a long message, ``detail``) is written too."""
    from sqlinfer.runtime.jvm import exception_chain, is_spark_exception, log_error, spark_log

    log = spark_log()  # None unless this command started a JVM
    from_spark = any(is_spark_exception(exc) for exc in exception_chain(error))
    if log is not None and (from_spark or isinstance(error, (BuildError, SessionError, ServeError))):
        line = error_line(error, log)
        log_error(error_line(error), error, detail)
    else:
        line = error_line(error)
    click.echo(line, err=True)
    sys.exit(1)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """SqlinferError (and Spark's own errors, translated) -> one clear line on stderr, exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlinfer.runtime.jvm import forget_spark_log, python_logs_to_spark_log, quiet_arrow_udf_hint
        from sqlinfer.runtime.spark_errors import jvm_ended, translate

        # Here, before any thread starts (see their docstrings).
        quiet_arrow_udf_hint()
        python_logs_to_spark_log()
        forget_spark_log()
        try:
            return func(*args, **kwargs)
        except SqlinferError as exc:
            fail(exc)
        except Exception as exc:
            translated: SqlinferError | None = jvm_ended(exc) or translate(exc)
            if translated is None:
                raise  # not the user's error but sqlinfer's: its traceback is the bug report
            translated.__cause__ = exc  # so the Spark exception's detail reaches the log
            fail(translated)

    return wrapper


class UsageLine(click.ClickException):
    """A command line click cannot parse, shown as the one ``error: ... [cli.usage]`` line (exit 2,
    click's status for usage errors) instead of click's usage block."""

    exit_code = 2

    def __init__(self, usage: click.UsageError) -> None:
        super().__init__(usage.format_message())
        ctx = usage.ctx
        hint = ""
        if ctx is not None and ctx.command.get_help_option(ctx) is not None:
            hint = f" (see '{ctx.command_path} {max(ctx.command.get_help_option_names(ctx), key=len)}')"
        self.error = CommandError(f"{self.message}{hint}", code="cli.usage")

    def show(self, file: Any = None) -> None:
        click.echo(error_line(self.error), err=True)


# `sqlinfer` alone: click shows the help, which is what a user typing it wants.
_HELP_INSTEAD = getattr(click.exceptions, "NoArgsIsHelpError", ())


class Commands(click.Group):
    """The command group: usage errors (an unknown option, a missing argument, a bad value) become
    one line. They arise while the group or a command parses its arguments, or in a command's
    own checks (``click.BadParameter``), all within these two methods."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        argv = list(args)  # before parsing consumes it: what a kept session is handed
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
            ctx.meta.setdefault(_ARGV, argv)
            return ctx
        except click.UsageError as exc:
            if isinstance(exc, _HELP_INSTEAD):
                raise
            raise UsageLine(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if isinstance(exc, _HELP_INSTEAD):
                raise
            raise UsageLine(exc) from None


_ARGV = "sqlinfer.argv"


def in_kept_session(loaded: Project, master: str | None, conf: dict[str, str]) -> None:
    """With ``SQLINFER_KEEP_SESSION`` set, run this command line in the project's kept session
    instead (sqlinfer/runtime/kept_session.py) and exit with its exit code."""
    from sqlinfer.models import flavors
    from sqlinfer.runtime import kept_session, timeline

    minutes = kept_session.idle_minutes()
    if minutes is None or kept_session.serving():
        return
    code = [path for item in loaded.models for path in flavors.get(item.decl.flavor).code_files(item, loaded.root)]
    key = kept_session.session_key(loaded.root, loaded.config.spark, master, conf, code)
    timeline.forwarded()
    sys.exit(kept_session.forward(loaded.target, key, click.get_current_context().meta[_ARGV], minutes))


project_argument = click.argument("project", type=click.Path(file_okay=False, path_type=Path), default=".")


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sqlinfer")
@click.option("--timings", is_flag=True,
              help="Print where the command's seconds went (imports, JVM, metastore, models, query, stop) at exit.")
def main(timings: bool) -> None:
    """sqlinfer: deep-learning models as Spark SQL functions, and SQL projects that build prediction tables."""
    from sqlinfer.runtime import timeline

    timeline.mark("command line read")
    if timings:
        timeline.print_at_exit()


@main.command()
@project_argument
@user_errors
def models(project: Path) -> None:
    """List each model's SQL function with its input and return type, and how its weights reach the
    workers (weights are checked)."""
    from sqlinfer.models import flavors
    from sqlinfer.models.flavors.base import Weights
    from sqlinfer.models.udf import BROADCAST_LIMIT, DEFAULT_BROADCAST_LIMIT_MB, weights_transport
    from sqlinfer.project import Project
    from sqlinfer.runtime.settings import is_local

    loaded = Project.load(project)
    limit = float(loaded.config.spark.get(BROADCAST_LIMIT, DEFAULT_BROADCAST_LIMIT_MB))
    local = is_local(str(loaded.config.spark.get("spark.master", "local")))

    def weights(blob: Weights) -> str:
        return f"{weights_transport(blob, limit, local)}, {len(blob.data) / 1e6:,.1f} MB"

    rows = [(m.plan.udf_name, m.plan.decl.flavor, flavors.get(m.plan.decl.flavor).describe(item, m.weights),
             f"{m.plan.decl.input} ({m.plan.decl.input_type})", m.plan.decl.return_type,
             weights(m.weights), m.plan.fingerprint[:12])
            for item, m in zip(loaded.models, loaded.resolve_models(), strict=True)]
    click.echo(format_table(["function", "flavor", "from", "input", "returns", "weights", "fingerprint"], rows))


@main.command()
@project_argument
@click.argument("query")
@click.option("--limit", default=20, show_default=True, help="Rows to print (ignored with --output).")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write all rows to a .parquet, .csv or .json file instead of printing.")
@click.option("--safe", is_flag=True,
              help="Run QUERY under the SQL guard of `sqlinfer serve`: no shell commands, Java calls, code "
                   "loading or writes outside the warehouse (docs/serve.md).")
@vars_option
@spark_options
@user_errors
def sql(project: Path, query: str, limit: int, output: Path | None, safe: bool, variables: str | None,
        master: str | None, conf: tuple[str, ...]) -> None:
    """Run QUERY with the project's model functions, and the sources and view nodes it names, registered."""
    from sqlinfer.project import Project
    from sqlinfer.runtime import timeline
    from sqlinfer.runtime.export import write_single_file
    from sqlinfer.runtime.spark_errors import jvm_ended, translate
    from sqlinfer.serve.guard import allowed, guard_conf, protect, refusal

    loaded = Project.load(project, parse_vars(variables))
    spark_conf = _conf_pairs(conf)
    in_kept_session(loaded, master, {**spark_conf, "sqlinfer.safe": "true"} if safe else spark_conf)
    if safe:
        spark_conf = guard_conf({**loaded.config.spark, **spark_conf}, allowed(loaded))
    spark = loaded.start(master, spark_conf, short=not loaded.calls_models(query))
    loaded.register_for_query(spark, query)
    timeline.mark("functions and sources registered")
    if safe:
        protect(spark, loaded)
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    try:
        frame = spark.sql(query)
        if output is not None:
            count = write_single_file(frame, output)
            click.echo(f"wrote {count} rows to {output}")
            return
        rows = frame.limit(limit + 1).collect()
        timeline.mark("query answered")
    except Exception as exc:
        # Translated here, where the project's model functions are known: an unknown function
        # is then reported with the closest of them.
        # A refusal first: translate() would report it as an analysis error.
        functions = [m.plan.udf_name for m in loaded.resolve_models()]
        translated = refusal(exc) or jvm_ended(exc) or translate(exc, functions)
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
@click.option("--prune", is_flag=True, help="Drop the tables built for nodes the project no longer has "
                                            "(without it, each is a warning).")
@click.option("--state", type=click.Path(exists=True, path_type=Path), default=None,
              help="An earlier build's target folder (or its manifest.json): --select state:modified+ builds "
                   "what changed since, and everything downstream.")
@vars_option
@spark_options
@user_errors
def build(project: Path, select: tuple[str, ...], exclude: tuple[str, ...], full_refresh: bool, prune: bool,
          state: Path | None, variables: str | None, master: str | None, conf: tuple[str, ...]) -> None:
    """Compile the project's SQL nodes, then materialize them in dependency order."""
    from sqlinfer.project import Project

    loaded = Project.load(project, parse_vars(variables))
    loaded.nodes().load()  # template errors surface before Spark starts
    in_kept_session(loaded, master, _conf_pairs(conf))
    spark = loaded.start(master, _conf_pairs(conf))
    result = loaded.build(spark, select, exclude, full_refresh, report=click.echo, prune=prune, state=state)
    results = loaded.target / "run_results.json"
    click.echo(f"Results: {results}")
    if not result.success:
        from sqlinfer.runtime.spark_errors import jvm_ended

        errors = "\n".join(f"node {n.name}: {n.message}" for n in result.nodes if n.status == "error")
        fail(jvm_ended() or build_failure(result, results), errors)


# A node's message in run_results.json: str() of its error, ``path:line: message [code]``.
_CODED = re.compile(r"(?P<text>.*) \[(?P<code>[a-z]+\.[a-z_]+)\]", re.S)


def build_failure(result: RunResult, results: Path) -> SqlinferError:
    """The error line of a build with failed nodes: one failed node's own error (as its progress
    line shows it), or, for several, which failed with their codes."""
    failed = [n for n in result.nodes if n.status == "error"]
    found = _CODED.fullmatch(failed[0].message) if len(failed) == 1 else None
    if found:  # the node's own error, already `path:line: message`: a BuildError, as it failed the build
        return BuildError(found["text"], code=found["code"])
    names = ", ".join(f"{n.name} ({m['code'] if (m := _CODED.fullmatch(n.message)) else 'error'})" for n in failed)
    nodes = "nodes" if len(failed) > 1 else "node"
    return BuildError(f"{len(failed)} {nodes} failed: {names}; each one's error is on its progress line and in "
                      f"{_shown(results)}", code="build.nodes_failed")


@main.command()
@project_argument
@with_selection
@vars_option
@spark_options
@user_errors
def test(project: Path, select: tuple[str, ...], exclude: tuple[str, ...], variables: str | None,
         master: str | None, conf: tuple[str, ...]) -> None:
    """Run the data tests (sql/*.yml and tests/*.sql) of the selected nodes against their tables."""
    from sqlinfer.project import Project

    loaded = Project.load(project, parse_vars(variables))
    loaded.nodes().load()
    in_kept_session(loaded, master, _conf_pairs(conf))
    spark = loaded.start(master, _conf_pairs(conf))
    result = loaded.test(spark, select, exclude, report=click.echo)
    failed = [t for t in result.tests if t.status in ("fail", "error")]
    if failed:
        fail(BuildError(f"{len(failed)} data test{'s' * (len(failed) != 1)} failed: "
                        f"{', '.join(t.name for t in failed)}", code="test.failed"))


@main.group()
def docs() -> None:
    """The project's docs page: lineage graph, nodes, sources, models (target/docs/index.html)."""


@docs.command("generate")
@project_argument
@vars_option
@spark_options
@user_errors
def docs_generate(project: Path, variables: str | None, master: str | None, conf: tuple[str, ...]) -> None:
    """Write target/docs/index.html: one self-contained page, open it in a browser or `docs serve` it."""
    from sqlinfer.project import Project

    loaded = Project.load(project, parse_vars(variables))
    loaded.nodes().load()
    in_kept_session(loaded, master, _conf_pairs(conf))
    spark = loaded.start(master, _conf_pairs(conf))
    click.echo(f"Wrote {_shown(loaded.docs(spark))}")


@docs.command("serve")
@project_argument
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 picks a free port.")
@user_errors
def docs_serve(project: Path, host: str, port: int) -> None:
    """Serve the generated docs page over HTTP until Ctrl-C."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from sqlinfer.project import Project

    folder = Project.load(project).target / "docs"
    if not (folder / "index.html").is_file():
        fail(CommandError(f"no docs page in {_shown(folder)}: run `sqlinfer docs generate` first",
                          code="cli.no_docs", path=folder))
    server = ThreadingHTTPServer((host, port), partial(SimpleHTTPRequestHandler, directory=str(folder)))
    try:  # from here on Ctrl-C stops it quietly, even before the loop has started
        click.echo(f"Serving {_shown(folder / 'index.html')} at http://{host}:{server.server_address[1]}/ "
                   "(Ctrl-C stops)")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command()
@project_argument
@spark_options
@user_errors
def seed(project: Path, master: str | None, conf: tuple[str, ...]) -> None:
    """Load the CSV files of the project's seeds folder into tables (usable with ref())."""
    from sqlinfer.project import Project

    loaded = Project.load(project)
    if not loaded.nodes().seeds:
        click.echo(f"No seeds: no .csv file in {loaded.root / loaded.config.seeds}.")
        return
    in_kept_session(loaded, master, _conf_pairs(conf))
    spark = loaded.start(master, _conf_pairs(conf))
    result = loaded.seed(spark, report=click.echo)
    if not result.success:
        fail(build_failure(result, loaded.target / "run_results.json"))


@main.command("compile")
@project_argument
@vars_option
@spark_options
@user_errors
def compile_command(project: Path, variables: str | None, master: str | None, conf: tuple[str, ...]) -> None:
    """Render every node to target/compiled/ and check it with Spark's analyzer (no model runs)."""
    from sqlinfer.project import Project
    from sqlinfer.runtime import timeline

    loaded = Project.load(project, parse_vars(variables))
    loaded.nodes().load()
    in_kept_session(loaded, master, _conf_pairs(conf))
    spark = loaded.start(master, _conf_pairs(conf), short=True)
    manifest = loaded.compile(spark)
    timeline.mark("nodes compiled and analyzed")
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
@project_argument
def debug(project: Path) -> None:
    """Check the environment and the project without starting Spark: Java, PySpark, torch and
    torchvision, CUDA devices, extras, the project's models and SQL, the metastore lock."""
    from sqlinfer.runtime.debug import run

    checks = run(project)
    width = max(len(c.name) for c in checks)
    for check in checks:
        click.echo(f"{check.name:<{width}}  {'ok  ' if check.ok else 'FAIL'}  {check.detail}")
    failed = [c.name for c in checks if not c.ok]
    click.echo(f"{len(failed)} problem(s): {', '.join(failed)}" if failed else "All checks passed.")
    if failed:
        raise SystemExit(1)


@main.command()
@project_argument
@user_errors
def clean(project: Path) -> None:
    """Remove the files commands regenerate from the target folder (compiled SQL, results, logs,
    caches); the tables (metastore and warehouse) are kept."""
    from sqlinfer.build.clean import KEPT, remove_generated
    from sqlinfer.project import Project

    loaded = Project.load(project)
    removed = remove_generated(loaded.target)
    click.echo(f"Removed {', '.join(_shown(p) for p in removed)}." if removed else "Nothing to remove.")
    kept = [loaded.target / name for name in KEPT if (loaded.target / name).exists()]
    if kept:
        click.echo(f"Kept {' and '.join(_shown(p) for p in kept)}: the project's tables.")


@main.command()
@project_argument
@user_errors
def stop(project: Path) -> None:
    """Stop the project's kept session (SQLINFER_KEEP_SESSION), freeing its metastore; its tables stay."""
    from sqlinfer.project import Project
    from sqlinfer.runtime import kept_session

    pid = kept_session.stop(Project.load(project).target)
    click.echo(f"Stopped the kept session (pid {pid})." if pid else "No kept session runs for this project.")


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
