"""Every kind of error the command line reports is exactly the one line docs/errors.md promises on
stderr, ``error: path:line: message [code]``, with the exit status docs/cli.md gives (1; 2 for a
command line that cannot be parsed): no Java or py4j stack trace, no Spark log line, no Python
warning. An error that came from Spark names Spark's log, ``target/logs/spark.log``, which holds
the Java detail the terminal is spared (issue 11, item 10).

Each case runs the real CLI in a subprocess, in the project's folder (``sqlinfer build .``, as a new
user would), and compares the whole of stderr. The kinds, by class (errors.CODES): ConfigError
(YAML syntax; a missing weights file, while the JVM starts beside it), TemplateError (an unknown
ref), BuildError (a SQL syntax error in `sql`; an unknown model function in `compile`; an
``on_error: fail`` row and a failing statement in `build`), SessionError (the metastore held by
another process; no Java; the JVM ending under a query), ServeError (a busy port), CommandError (a
folder that exists; an unknown option). ClientError is the Python client's, not the CLI's. The
cases that need no JVM run first, each in a second or two; the five that start Spark share one
small project (the digits model over three images, one of them not an image).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.reliability]

SQLINFER = [str(Path(sys.executable).with_name("sqlinfer"))]  # the installed command
DIGITS = Path(__file__).resolve().parents[2] / "projects" / "digits"
LOG = "target/logs/spark.log"
NAMED = f" (Spark's log: {LOG})"  # what an error from Spark adds before its [code]
# For the commands that run no model: Python workers started for nothing cost seconds of CPU. (The
# syntax error keeps them: workers still starting when the command ends made the noise.)
NO_WARM_UP = ("--conf", "spark.sqlinfer.warmUpWorkers=false")

NO_MODELS = "models: []\n"
PROJECT = """\
    name: errors
    sources:
      images:
        format: binaryFile
        path: data
        glob: "*.png"
    """
DIGITS_MODEL = """\
    models:
      - name: digits
        flavor: python
        class: digits_net:DigitsCNN
        kwargs: {num_classes: 10}
        weights: weights/digits_cnn.safetensors
        input: image
        preprocess: {color_mode: L, resize: [8, 8], mean: [0.5], std: [0.5]}
        labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
        on_error: fail
    """


def sqlinfer(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``sqlinfer ARGS`` run in ``project``'s folder, as a user at a terminal would."""
    return subprocess.run([*SQLINFER, *args], cwd=project, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str, status: int = 1) -> None:
    """stderr is exactly ``expected`` (a regular expression) and one line; the exit status is ``status``."""
    assert re.fullmatch(expected + r"\n", result.stderr), result.stderr
    assert result.returncode == status, result.stderr


def spark_log(project: Path) -> str:
    return (project / LOG).read_text(errors="replace")


# --- errors before Spark, or with no Spark session to show for ---------------------------------------

@pytest.fixture()
def plain(tmp_path: Path) -> Path:
    """A project without models or SQL: the commands get as far as their checks, in a second."""
    return write(tmp_path / "plain", {"sqlinfer_project.yml": PROJECT, "models.yml": NO_MODELS})


def test_yaml_syntax_error(plain: Path) -> None:
    (plain / "sqlinfer_project.yml").write_text("name: errors\nsources: [images\n")
    result = sqlinfer(plain, "build", ".")
    assert_one_line(result, re.escape(
        f"error: {plain}/sqlinfer_project.yml:3: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "[config.yaml_syntax]"))
    assert result.stdout == ""


def test_unknown_ref(plain: Path) -> None:
    write(plain, {"sql/totals.sql": "SELECT count(*) AS n\nFROM {{ ref('nodes_typo') }}\n"})
    result = sqlinfer(plain, "build", ".")
    assert_one_line(result, re.escape(
        f"error: {plain}/sql/totals.sql:2: ref('nodes_typo'): no such node (nodes: totals) [sql.unknown_ref]"))


def test_missing_weights_while_the_jvm_starts(plain: Path) -> None:
    """`build` starts the JVM on a thread while it checks the models: however far the JVM got when
    the check failed, nothing of it reaches the terminal, and the error, not Spark's, names no log."""
    write(plain, {"models.yml": DIGITS_MODEL.replace("digits_cnn.safetensors", "missing.safetensors"),
                  "sql/scored.sql": "SELECT digits_predict(content) AS pred FROM {{ source('images') }}\n"})
    result = sqlinfer(plain, "build", ".")
    assert_one_line(result, re.escape(
        f"error: {plain}/models.yml:6: model 'digits': weights file not found: {plain}/weights/missing.safetensors "
        "[config.missing_weights]"))


def test_unknown_option_is_one_line_with_usage_status(plain: Path) -> None:
    """A command line click cannot parse is an error too: one line, and status 2 (click's, and the
    usual one for usage errors) rather than click's usage block."""
    result = sqlinfer(plain, "sql", ".", "--limt", "3", "SELECT 1")
    assert_one_line(result, re.escape(
        "error: No such option '--limt'. Did you mean '--limit'? (see 'sqlinfer sql --help') [cli.usage]"), 2)
    result = sqlinfer(plain, "build", ".", "--vars", "{eval_split: [")
    assert_one_line(result, re.escape(
        "error: Invalid value for --vars: not YAML: expected the node content, but found '<stream end>' "
        "(see 'sqlinfer build --help') [cli.usage]"), 2)


def test_init_into_a_folder_that_is_not_empty(plain: Path) -> None:
    result = sqlinfer(plain, "init", "demo", "--dir", str(plain))
    assert_one_line(result, re.escape(f"error: {plain}: {plain} exists and is not empty [cli.exists]"))


def test_serve_on_a_busy_port(plain: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = sqlinfer(plain, "serve", ".", "--port", str(port))
    assert_one_line(result, re.escape(
        f"error: port {port} on 127.0.0.1 is already in use (another server, or an earlier `sqlinfer serve` "
        "still running?): choose another with --port, or --port 0 for a free one [serve.port_in_use]"))


def test_metastore_held_by_another_process(plain: Path) -> None:
    lock = plain / "target" / "metastore_db" / "dbex.lck"  # what Derby locks while a JVM has it open
    lock.parent.mkdir(parents=True)
    with lock.open("ab") as held:
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = sqlinfer(plain, "sql", ".", "SELECT 1")
    assert_one_line(result, re.escape(
        f"error: the project's metastore {plain}/target/metastore_db is in use by another process (")
        + r"pid \d+: [^\n]+" + re.escape(
        "). The embedded Derby metastore allows one process at a time: stop that process (a `sqlinfer serve`, "
        "`sql` or `build` on this project; `sqlinfer stop` for a kept session) and try again. While `sqlinfer "
        "serve` runs, query through it (beeline, sqlinfer.client.connect) instead of running other sqlinfer "
        "commands on the project. "
        "[metastore.locked]"))
    assert not (plain / LOG).exists()  # refused before any JVM


def test_no_java(plain: Path) -> None:
    """The first error a machine without Java meets: the launcher's complaint goes to Spark's log.
    Each command starts a new log and keeps the one before."""
    for jdk in ("no-jdk", "still-no-jdk"):
        result = sqlinfer(plain, "sql", ".", "SELECT 1", JAVA_HOME=str(plain / jdk))
        assert_one_line(result, re.escape(
            "error: the Spark JVM did not start: is Java 17 or later installed (java on PATH, or JAVA_HOME)?"
            f"{NAMED} [session.jvm_failed]"))
    log = spark_log(plain)
    assert f"{plain}/still-no-jdk/bin/java: No such file or directory" in log
    assert "JAVA_GATEWAY_EXITED" in log
    assert f"{plain}/no-jdk/bin/java: No such file or directory" in (plain / f"{LOG}.1").read_text()


# --- errors from Spark: one project, the digits model over three images -------------------------------

@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two table nodes that pass Spark's analyzer and fail while they run: ``ratio`` divides by zero,
    ``scored`` meets a file that is not an image with ``on_error: fail``."""
    root = write(tmp_path_factory.mktemp("cli_errors") / "scored", {
        "sqlinfer_project.yml": PROJECT,
        "models.yml": DIGITS_MODEL,
        "sql/ratio.sql": "{{ config(materialized='table') }}\nSELECT id, 1 / (id - id) AS ratio FROM range(3)\n",
        "sql/scored.sql": "{{ config(materialized='table') }}\n"
                          "SELECT path, digits_predict(content) AS pred FROM {{ source('images') }}\n",
        "data/not_an_image.png": "this is text\n",
    })
    shutil.copy(DIGITS / "digits_net.py", root)
    (root / "weights").mkdir()
    shutil.copy(DIGITS / "weights" / "digits_cnn.safetensors", root / "weights")
    for image in sorted((DIGITS / "data" / "images" / "test" / "3").glob("*.png"))[:2]:
        shutil.copy(image, root / "data")
    return root


# The model's message for the bad row; the file's bytes are read from a BytesIO at some address.
BAD_ROW = (r"model 'digits' \(digits_predict\): bad input at row \d+ of this task: undecodable: "
           r"UnidentifiedImageError: cannot identify image file <_io\.BytesIO object at 0x[0-9a-f]+> "
           r"\(on_error: fail; use on_error: null to get NULL for such rows\)")


def test_sql_syntax_error(scored: Path) -> None:
    """The issue's first case: the right line was followed by 26 lines of Spark's task errors."""
    result = sqlinfer(scored, "sql", ".", "SELECT path FROM images WHERE = 1")
    assert_one_line(result, re.escape(
        "error: SQL syntax error: [PARSE_SYNTAX_ERROR] Syntax error at or near '='. SQLSTATE: 42601 "
        f"(line 1, pos 30){NAMED} [sql.syntax]"))
    assert result.stdout == ""
    log = spark_log(scored)
    assert "ERROR sqlinfer: error: SQL syntax error: [PARSE_SYNTAX_ERROR]" in log
    assert "org.apache.spark.sql.catalyst.parser.ParseException" in log  # the Java detail
    assert "\tat org.apache.spark.sql.catalyst.parser." in log


def test_build_with_two_failing_nodes(scored: Path) -> None:
    """Each failed node's error on its progress line (stdout, unchanged); stderr the one line."""
    result = sqlinfer(scored, "build", ".")
    assert_one_line(result, re.escape(
        "error: 2 nodes failed: ratio (sql.failed), scored (udf.failed); each one's error is on its progress "
        f"line and in target/run_results.json{NAMED} [build.nodes_failed]"))
    lines = result.stdout.splitlines()
    assert lines[0] == "[1/2] START table ratio"
    assert lines[1].startswith(f"[1/2] ERROR table ratio: {scored}/sql/ratio.sql:2: query failed: "
                               "[DIVIDE_BY_ZERO] Division by zero.")
    assert lines[1].endswith(" [sql.failed]")
    assert lines[2] == "[2/2] START table scored"
    assert re.fullmatch(re.escape(f"[2/2] ERROR table scored: {scored}/sql/scored.sql: ") + BAD_ROW
                        + re.escape(" [udf.failed]"), lines[3]), lines[3]
    assert re.fullmatch(r"Done in \d+\.\ds: 0 ok, 2 error, 0 skipped\.", lines[4]), lines[4]
    assert lines[5:] == [f"Results: {scored}/target/run_results.json"]
    log = spark_log(scored)
    assert "org.apache.spark.SparkArithmeticException: [DIVIDE_BY_ZERO]" in log
    assert "org.apache.spark.api.python.PythonException" in log and "sqlinfer.worker.score.InputError" in log


def test_on_error_fail_row_in_a_build(scored: Path) -> None:
    """The issue's second case: about 30 lines of executor stack came before the clean error."""
    result = sqlinfer(scored, "build", ".", "--select", "scored")
    assert_one_line(result, re.escape(f"error: {scored}/sql/scored.sql: ") + BAD_ROW
                    + re.escape(f"{NAMED} [udf.failed]"))
    log = spark_log(scored)
    assert "ERROR Executor: Exception in task" in log
    assert "\tat org.apache.spark.api.python.BasePythonRunner" in log


@pytest.fixture()
def typo(scored: Path) -> Iterator[Path]:
    """A node calling a misspelt model function, for this test only."""
    node = scored / "sql" / "typo.sql"
    node.write_text("{{ config(materialized='view') }}\nSELECT digits_predcit(content) AS pred\n"
                    "FROM {{ source('images') }}\n")
    yield node
    node.unlink()


def test_unknown_model_function_in_compile(scored: Path, typo: Path) -> None:
    result = sqlinfer(scored, "compile", ".", *NO_WARM_UP)
    assert_one_line(result, re.escape(
        f"error: {typo}:2: [UNRESOLVED_ROUTINE] Cannot resolve routine `digits_predcit` on search path "
        "[`system`.`builtin`, `system`.`session`, `spark_catalog`.`default`]. SQLSTATE: 42883; line 2 pos 7 "
        "(did you mean 'digits_predict'?) (the project's model functions: digits_predict")
        + r"(, [\w, ]+)?\)"  # and the companion functions the model may have (docs/models.md)
        + re.escape(f"{NAMED} [sql.analysis]"))
    assert result.stdout == ""
    assert "org.apache.spark.sql.AnalysisException: [UNRESOLVED_ROUTINE]" in spark_log(scored)


def test_jvm_ending_under_a_query(scored: Path) -> None:
    """The JVM gone mid-query (here System.exit, as an out-of-memory kill would): py4j's errors
    become one line with the JVM's exit status."""
    result = sqlinfer(scored, "sql", ".", "SELECT java_method('java.lang.System', 'exit', 3)", *NO_WARM_UP)
    assert_one_line(result, re.escape(
        f"error: the Spark JVM ended unexpectedly (exit code 3) while the command ran{NAMED} "
        "[session.jvm_failed]"))
    assert "ERROR sqlinfer: error: the Spark JVM ended unexpectedly" in spark_log(scored)


def test_safe_sql_refuses_what_serve_refuses(scored: Path) -> None:
    """`sqlinfer sql --safe` arms the serve guard: the call that ended the JVM above is refused."""
    result = sqlinfer(scored, "sql", ".", "--safe", "SELECT java_method('java.lang.System', 'exit', 3)",
                      *NO_WARM_UP)
    assert_one_line(result, r"error: refused by the SQL guard: .*java_method.* \(a trusted deployment can allow "
                    + re.escape(f"it: serve.allow: [reflect]){NAMED} [sql.refused]"))
    assert result.stdout == ""
