"""The errors users see, one class per phase, each with a stable code and where it comes from.

Every error is a :class:`SqlinferError`; the subclass says in which phase it arose (reading the
project's YAML, rendering its SQL templates, building on Spark, serving, ...). ``code`` is a
stable, greppable identifier listed in :data:`CODES` with what to do about it (docs/errors.md
shows the same list); ``path`` and ``line`` point into the user's files when the error comes
from one of them. ``str(err)`` is the ``path:line: message [code]`` form the CLI prints.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class SqlinferError(Exception):
    """A user-facing error: a message, a stable ``code``, and optionally a ``path`` and ``line``."""

    def __init__(self, message: str, *, code: str, path: str | Path | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.path = str(path) if path is not None else None
        self.line = line

    @property
    def location(self) -> str:
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line else self.path

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.message} [{self.code}]"


class ConfigError(SqlinferError):
    """The project file, a models file or a model's weights, labels or network is wrong."""


class TemplateError(SqlinferError):
    """A SQL file cannot be rendered: Jinja syntax, an unknown ref/source/var, a bad config()."""


class BuildError(SqlinferError):
    """Spark refused or failed a node's SQL, a source cannot be read, or a model function failed."""


class SessionError(SqlinferError):
    """The project's Spark session cannot start (its embedded metastore is held elsewhere)."""


class ServeError(SqlinferError):
    """`sqlinfer serve` cannot start or stopped: settings, address, port, or the JVM."""


class ClientError(SqlinferError):
    """`sqlinfer.client.connect` cannot reach or log in to a server."""


class CommandError(SqlinferError):
    """A command's own arguments are wrong (an output file, a new project's name or folder)."""


# Every code, the class that raises it, and what the user can do. docs/errors.md lists the same;
# tests/unit/test_errors.py checks that every code raised in the package is here and there.
CODES: dict[str, tuple[type[SqlinferError], str]] = {
    # -- config: sqlinfer_project.yml, models.yml, weights -------------------------------------------
    "config.not_a_project": (ConfigError, "Run the command in a project folder (one with sqlinfer_project.yml), "
                             "or create one with `sqlinfer init NAME`."),
    "config.missing_file": (ConfigError, "A file the project names does not exist: fix the path "
                            "(relative to the project folder) or add the file."),
    "config.yaml_syntax": (ConfigError, "Fix the YAML syntax at the line shown (indentation, a missing colon "
                           "or quote)."),
    "config.duplicate_key": (ConfigError, "A mapping names the same key twice: keep one."),
    "config.unknown_key": (ConfigError, "Remove or rename the key; the message suggests the closest valid one "
                           "(docs/models.md and docs/projects.md list every key)."),
    "config.missing_key": (ConfigError, "Add the required key named in the message."),
    "config.invalid_value": (ConfigError, "Give the key a value of the kind the message names."),
    "config.path_outside_project": (ConfigError, "Paths in a project stay inside its folder: move the file "
                                    "into the project, or use a source with an absolute path or URI."),
    "config.duplicate_name": (ConfigError, "Two models have the same name or SQL function name: rename one "
                              "(`name:` or `udf:`)."),
    "config.missing_weights": (ConfigError, "The weights file does not exist: fix `weights:` or add the file."),
    "config.bad_weights": (ConfigError, "The weights cannot be read safely: use a .safetensors file or a "
                           "state_dict saved with torch.save (read with weights_only=True)."),
    "config.weights_mismatch": (ConfigError, "The weights do not fit the declared network: check "
                                "`architecture`, `class`, `kwargs` (e.g. num_classes) against the file."),
    "config.bad_input_shape": (ConfigError, "The network refuses the input size: fix `preprocess` (crop, "
                               "resize) or `shape`."),
    "config.unknown_architecture": (ConfigError, "Use a name from "
                                    "torchvision.models.list_models(module=torchvision.models)."),
    "config.bad_class": (ConfigError, "`class: module:Class` cannot be imported: put the module in the project "
                         "folder or install it, and check the class name."),
    "config.labels_mismatch": (ConfigError, "The labels file needs one line per network output."),
    "config.missing_model": (ConfigError, "The MLflow model, version, alias, run or folder named by `uri:` (or "
                             "`weights: models:/...`) cannot be found: check the name and the registry's "
                             "tracking URI (the project file's `mlflow:` or MLFLOW_TRACKING_URI)."),
    "config.unsafe_model": (ConfigError, "Loading the model would run code it carries (a pickle, a pyfunc's "
                            "loader): log it in a data format (mlflow.pytorch's pt2), or declare "
                            "`trust_code: true` if you trust whoever logs to the registry (docs/models.md)."),
    "config.missing_extra": (ConfigError, "The model's flavor needs a library that is not installed: install the "
                             "extra the message names (e.g. pip install 'sqlinfer[onnx]')."),
    "config.unsafe_torchscript": (ConfigError, "The TorchScript file calls operators that reach files, processes "
                                  "or other machines (torch.save, torch.from_file, torch.classes, ops outside aten), "
                                  "so it was not loaded: export the network without them, or give a .safetensors "
                                  "state_dict to the torchvision or python flavor (docs/reliability.md)."),
    "config.yaml_too_large": (ConfigError, "The YAML's aliases (*name) expand to too many values, or it nests too "
                              "deeply: write the values out (docs/reliability.md)."),
    # -- template: rendering a project's SQL files -----------------------------------------------------
    "sql.bad_name": (TemplateError, "SQL file names are node names: use letters, digits and _ only."),
    "sql.duplicate_node": (TemplateError, "Two SQL files have the same name in different folders: rename one."),
    "sql.name_clash": (TemplateError, "A node has the name of a source: rename the file or the source."),
    "sql.unknown_ref": (TemplateError, "ref() names no SQL file of the project: fix the name (the message "
                        "lists the nodes)."),
    "sql.unknown_source": (TemplateError, "source() names no source of sqlinfer_project.yml: fix the name or "
                           "declare it under `sources:`."),
    "sql.bad_config": (TemplateError, "Fix the config() call: known arguments are materialized, unique_key, "
                       "partition_by, file_format, max_bad_rows and max_bad_fraction; incremental nodes need "
                       "unique_key."),
    "sql.missing_var": (TemplateError, "Set the variable under `vars:` in the project file, pass --vars, or "
                        "give var() a default."),
    "sql.jinja_syntax": (TemplateError, "Fix the Jinja syntax at the line shown."),
    "sql.undefined": (TemplateError, "The template uses a name that is not defined: check spelling; known are "
                      "ref, source, config, var, is_incremental, this, udfs, the model names and macros."),
    "sql.sandbox": (TemplateError, "Templates run sandboxed: access to Python internals is refused."),
    "sql.unknown_template": (TemplateError, "{% include %}, {% import %} and {% extends %} name a file of the "
                             "project's SQL or macros folder, relative to it (without '..')."),
    "dag.cycle": (TemplateError, "The nodes ref() each other in a circle: break the cycle shown."),
    "dag.unknown_node": (TemplateError, "--select/--exclude names no node: the message lists the nodes."),
    "dag.no_state": (TemplateError, "state:modified compares with an earlier build: pass --state with that "
                     "build's target folder (or its manifest.json)."),
    # -- build: running on Spark ------------------------------------------------------------------------
    "test.bad_declaration": (ConfigError, "A data test in the SQL folder's YAML is not one sqlinfer knows, or "
                             "lacks an argument: the message names the test and what it needs (docs/projects.md)."),
    "test.failed": (BuildError, "Data tests found failing rows: each one's line shows how many and a few of them; "
                    "fix the data or the model, or give the test `severity: warn`."),
    "state.unreadable": (BuildError, "--state names no readable manifest.json: give the target folder of an "
                         "earlier build (every build writes target/manifest.json)."),
    "source.unreadable": (BuildError, "Spark cannot read the source: check its path, format and options in "
                          "sqlinfer_project.yml."),
    "source.empty": (BuildError, "A source declared `required: true` matches no file: check its path and glob, "
                     "or add the files."),
    "sql.syntax": (BuildError, "Spark cannot parse the SQL: fix the syntax at the line shown (see "
                   "target/compiled/ for the rendered SQL)."),
    "sql.analysis": (BuildError, "Spark refused the SQL (unknown column, table or function): the message names "
                     "it; an unknown function lists the project's model functions."),
    "sql.failed": (BuildError, "The query failed while running: the message gives Spark's reason."),
    "udf.failed": (BuildError, "A model function failed on a row with on_error: fail; the message names the "
                   "model and row. Fix the row, or declare on_error: null to get NULL for bad rows."),
    "udf.worker_died": (BuildError, "A Python worker process died in a task (killed, out of memory, or a crash in "
                        "the model's code): the table is unchanged. Run again; to let Spark retry such a task, use "
                        "`--master local[N,2]` (local) or `--conf spark.task.maxFailures=4` (cluster)."),
    "build.failed": (BuildError, "The node failed for a reason Spark did not classify: the message says why."),
    "sql.refused": (BuildError, "The SQL guard (`sqlinfer serve`, `sqlinfer sql --safe`) refused a statement that "
                    "would leave SQL or change what every client shares: rewrite it, or allow the feature the "
                    "message names in `serve: {allow: [...]}` (docs/serve.md)."),
    "build.nodes_failed": (BuildError, "Several nodes failed: each one's error is on its progress line and in "
                           "target/run_results.json; fix them one by one (--select NODE builds one)."),
    "build.schema_change": (BuildError, "An incremental node's SELECT has other columns than its table: set "
                            "config(on_schema_change='append_new_columns' or 'sync_all_columns'), or rebuild "
                            "it with --full-refresh (docs/projects.md)."),
    "build.swap_failed": (BuildError, "A rebuilt table's new files could not be moved into its folder (permissions, "
                          "a file system that cannot rename folders): the table is unchanged, the next build "
                          "removes the staging folder."),
    "build.too_many_bad_rows": (BuildError, "More input rows failed than the node's max_bad_rows / max_bad_fraction "
                                "allow; the table is unchanged. Query the model's `<function>_checked` to see why."),
    # -- session ----------------------------------------------------------------------------------------
    "metastore.locked": (SessionError, "Another process holds the project's embedded metastore: stop it (a "
                         "`sqlinfer serve`, `sql` or `build` on the project; `sqlinfer stop` for a kept session), or "
                         "query through the running `sqlinfer serve`."),
    "session.jvm_failed": (SessionError, "The Spark JVM did not start, or ended while the command ran: Spark's "
                           "log (target/logs/spark.log) says why; check that Java 17 or later is installed (java "
                           "on PATH, or JAVA_HOME), and the driver's memory and Java options."),
    "session.bad_keep": (SessionError, "Set SQLINFER_KEEP_SESSION to the minutes a kept session waits for the "
                         "next command (e.g. 10), or unset it (docs/session.md)."),
    "session.kept_failed": (SessionError, "The project's kept session could not start or be reached: its log "
                            "(target/logs/kept_session.log) says why; unset SQLINFER_KEEP_SESSION to run commands "
                            "on their own (docs/session.md)."),
    "session.executor_env": (SessionError, "The executors' Python (spark.pyspark.python on each node) cannot "
                             "import sqlinfer, torch, pyarrow or numpy, or cannot start: install sqlinfer on every "
                             "node, or ship a packed virtualenv with spark.archives (docs/cluster.md)."),
    # -- serve ------------------------------------------------------------------------------------------
    "serve.bad_setting": (ServeError, "Fix the hive.server2.* setting the message names (docs/serve.md)."),
    "serve.bad_host": (ServeError, "--host must be an address or name of this machine."),
    "serve.unsafe_bind": (ServeError, "Enable authentication (and TLS) before listening beyond loopback, keep "
                          "--host 127.0.0.1, or on a trusted network pass --insecure-no-auth."),
    "serve.port_in_use": (ServeError, "Choose another --port, or --port 0 for a free one."),
    "serve.port_denied": (ServeError, "Ports below 1024 need root: choose another --port."),
    "serve.start_failed": (ServeError, "The Thrift server did not start: the message gives Java's reason."),
    "serve.jvm_exited": (ServeError, "The Spark JVM ended on its own: the end of Spark's log "
                         "(target/logs/spark.log) says why."),
    "serve.guard_unavailable": (ServeError, "The SQL guard could not be turned on (its jar missing from the "
                                "package, or a Spark version it does not know): reinstall sqlinfer with the "
                                "supported pyspark."),
    # -- client -----------------------------------------------------------------------------------------
    "client.missing_pyhive": (ClientError, "Install the client extra: pip install 'sqlinfer[client]'."),
    "client.bad_auth": (ClientError, "Use auth NONE, NOSASL, LDAP, CUSTOM or PAM (for KERBEROS use "
                        "pyhive.hive.connect directly)."),
    "client.bad_transport": (ClientError, "Use transport binary or http, as the server's "
                             "hive.server2.transport.mode."),
    "client.connect_failed": (ClientError, "Check host, port, transport, auth and TLS against what "
                              "`sqlinfer serve` printed."),
    # -- command-line arguments ---------------------------------------------------------------------------
    "cli.bad_output": (CommandError, "--output must end in .parquet, .csv or .json."),
    "cli.bad_name": (CommandError, "A project name is an identifier: letters, digits and _."),
    "cli.no_docs": (CommandError, "`sqlinfer docs serve` serves target/docs/index.html: run `sqlinfer docs "
                    "generate` first."),
    "cli.exists": (CommandError, "`sqlinfer init` writes into a new or empty folder: choose another --dir."),
    "cli.usage": (CommandError, "The command line cannot be parsed (an unknown option, a missing argument, a bad "
                  "value): `sqlinfer COMMAND --help` lists what the command takes. Exits with status 2."),
}


def closest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing when none is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""
