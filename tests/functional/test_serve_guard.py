"""The SQL guard of `sqlinfer serve` (issue 11, item 9): an authenticated client stays inside SQL.

One real server over a copy of projects/digits (sources only: nothing to build), real clients
(PyHive through sqlinfer.client, and beeline, whose Hive JDBC driver sends settings with every
connection). Each way out of SQL is refused with its message, leaves no trace (no file the shell
command would touch, no directory written), and the server keeps answering: another client's model
query returns the same labels as before the attempts. The allow list (`serve: {allow: [...]}`) is
tested through the same functions `sqlinfer sql --safe` uses, in a child process started beside the
server (a second server would cost a second start of the Thrift server and the models for the same
check). The shipped jar is checked to be the build of its source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Served, docs_catalogue, start_serve, wait_ready

from sqlinfer.client import connect
from sqlinfer.errors import SqlinferError
from sqlinfer.runtime.settings import RESOURCES, SPARK_JAR
from sqlinfer.serve.server import beeline_path

pytestmark = [pytest.mark.spark, pytest.mark.reliability]

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "projects" / "digits"
SQLINFER = str(Path(sys.executable).with_name("sqlinfer"))
QUERY = "SELECT digits_predict(content).label FROM digits_images ORDER BY path LIMIT 5"
QUERY_TIMEOUT_S = 180
GUARD = "sqlinfer SQL guard: "
RESTRICTED = 'is not allowed because "spark.sql.restrictedMode.enabled" is enabled'


def copy_digits(dest: Path) -> Path:
    """projects/digits with its 450 test images and no SQL nodes: served without a build."""
    shutil.copytree(DIGITS, dest, ignore=shutil.ignore_patterns("target", "__pycache__", "train", "sql"))
    return dest


def query(port: int, sql: str, **kwargs: object) -> list[tuple]:
    with connect("127.0.0.1", port, timeout_s=QUERY_TIMEOUT_S, **kwargs) as conn:  # type: ignore[arg-type]
        cursor = conn.cursor()
        cursor.execute(sql)
        return cursor.fetchall() if cursor.description else []


def refusal(port: int, sql: str) -> str:
    """The error a client gets for ``sql``, which must fail."""
    with pytest.raises(Exception) as failed:  # PyHive's OperationalError carries the server's message
        query(port, sql)
    return str(failed.value)


@dataclass
class Guarded:
    server: Served
    project: Path
    scratch: Path  # files the refused statements would have made or read
    labels: list[str]  # the model's answer before any attempt


# The session `sqlinfer sql --safe` starts, less the models (the server's tests register them; here they
# would only add torch's import).
SAFE_SESSION = """
import json, sys
import sqlinfer
from sqlinfer.serve.guard import allowed, guard_conf, refusal

project = sqlinfer.Project.load(sys.argv[1])
spark = project.session(None, guard_conf({**project.config.spark, "spark.ui.enabled": "false"}, allowed(project)))
for statement in sys.argv[2:]:
    try:
        print(json.dumps({"rows": [list(row) for row in spark.sql(statement).collect()]}), flush=True)
    except Exception as exc:
        error = refusal(exc)
        print(json.dumps({"refused": str(error) if error else None, "other": str(exc)[:300]}), flush=True)
"""


@dataclass
class AllowRun:
    proc: subprocess.Popen[str]
    marker: Path  # the file the refused TRANSFORM would touch


@pytest.fixture(scope="module")
def allow_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AllowRun]:
    """The allow-list session, started before the server (see `guarded`): the two JVMs start together."""
    root = tmp_path_factory.mktemp("allow")
    project = copy_digits(root / "digits")
    with (project / "sqlinfer_project.yml").open("a") as file:
        file.write("serve:\n  allow: [reflect]\n")
    marker = root / "transform-ran"
    statements = ["SELECT length(reflect('java.util.UUID', 'randomUUID'))",
                  f"SELECT TRANSFORM(1) USING 'touch {marker}' AS (x)",
                  f"ADD JAR {root}/code.jar"]
    proc = subprocess.Popen([sys.executable, "-c", SAFE_SESSION, str(project), *statements], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=root)
    try:
        yield AllowRun(proc, marker)
    finally:
        proc.kill()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, allow_run: AllowRun) -> Iterator[Guarded]:
    root = tmp_path_factory.mktemp("guard")
    project = copy_digits(root / "digits")
    scratch = root / "scratch"
    scratch.mkdir()
    (scratch / "rows.txt").write_text("1\n2\n")
    server = wait_ready(start_serve(project, root))
    try:
        labels = [row[0] for row in query(server.port, QUERY)]
        assert len(labels) == 5 and set(labels) <= set("0123456789")
        yield Guarded(server, project, scratch, labels)
    finally:
        server.kill()


def test_the_banner_says_the_guard_is_on(guarded: Guarded) -> None:
    assert ("  SQL guard: on, allowing none of its features (docs/serve.md#what-clients-cannot-do)"
            in guarded.server.lines)


def test_script_transform_runs_no_shell_command(guarded: Guarded) -> None:
    marker = guarded.scratch / "transform-ran"
    for sql in (f"SELECT TRANSFORM(path) USING 'touch {marker}' AS (x) FROM digits_images",
                f"SELECT * FROM (SELECT TRANSFORM(1) USING 'touch {marker}' AS (x)) WHERE x IS NOT NULL"):
        message = refusal(guarded.server.port, sql)
        assert f"The TRANSFORM ... USING clause {RESTRICTED}" in message, message
    time.sleep(1)  # a command would have run by now
    assert not marker.exists()
    assert guarded.server.alive()


@pytest.mark.parametrize("function", ["reflect", "java_method", "try_reflect"])
def test_java_methods_cannot_be_called(guarded: Guarded, function: str) -> None:
    message = refusal(guarded.server.port, f"SELECT {function}('java.lang.System', 'exit', 1)")
    assert f"The `{function}` function {RESTRICTED}" in message, message
    assert guarded.server.alive()


CASES = {
    # name: (statement, the refusal's words after "sqlinfer SQL guard: ")
    "add_jar": ("ADD JAR {scratch}/code.jar", "ADD JAR is refused: it loads code into the server (a trusted "
                "deployment can allow it: serve.allow: [add_jar])"),
    "add_file": ("ADD FILE {scratch}/rows.txt", "ADD FILE is refused: it copies a file to the server and its "
                 "workers (a trusted deployment can allow it: serve.allow: [add_file])"),
    "add_archive": ("ADD ARCHIVE {scratch}/code.zip", "ADD ARCHIVE is refused: it unpacks an archive on the "
                    "server and its workers (a trusted deployment can allow it: serve.allow: [add_archive])"),
    "add_jar_in_execute_immediate": ("EXECUTE IMMEDIATE 'ADD JAR {scratch}/code.jar'", "ADD JAR is refused"),
    "create_function_using_jar": (
        "CREATE FUNCTION evil AS 'com.example.Evil' USING JAR '{scratch}/code.jar'",
        "CREATE FUNCTION ... AS 'com.example.Evil' is refused: it loads a Java class (from a jar it names, or "
        "Hive's reflect UDFs) into the server (a trusted deployment can allow it: serve.allow: [create_function])"),
    "hive_reflect_udf": ("CREATE TEMPORARY FUNCTION call AS 'org.apache.hadoop.hive.ql.udf.generic.GenericUDFReflect'",
                         "CREATE FUNCTION ... AS 'org.apache.hadoop.hive.ql.udf.generic.GenericUDFReflect' is refused"),
    "set_spark": ("SET spark.sql.shuffle.partitions=1", "SET spark.sql.shuffle.partitions is refused: all clients "
                  "share the server's one session, so a setting would change every client's queries (a trusted "
                  "deployment can allow it: serve.allow: [set])"),
    "set_hive": ("SET hive.exec.scratchdir={scratch}", "SET hive.exec.scratchdir is refused"),
    "reset": ("RESET", "RESET is refused: all clients share the server's one session (a trusted deployment can "
              "allow it: serve.allow: [set])"),
    "drop_model_function": ("DROP TEMPORARY FUNCTION digits_predict", "DROP FUNCTION digits_predict is refused: "
                            "digits_predict is one of the project's model functions, which every client shares"),
    "replace_model_function": ("CREATE OR REPLACE TEMPORARY FUNCTION digits_predict(x BINARY) RETURNS INT RETURN 1",
                               "CREATE FUNCTION digits_predict is refused: digits_predict is one of the project's "
                               "model functions"),
    "shadow_source": ("CREATE TEMPORARY VIEW digits_images AS SELECT 'x' AS path",
                      "CREATE TEMPORARY VIEW digits_images is refused: digits_images is one of the project's views, "
                      "which every client shares"),
    "replace_source": ("CREATE OR REPLACE TEMPORARY VIEW digits_images AS SELECT 'x' AS path",
                       "CREATE TEMPORARY VIEW digits_images is refused"),
    "drop_source": ("DROP VIEW digits_images", "DROP VIEW digits_images is refused"),
    "cache_over_source": ("CACHE TABLE digits_images AS SELECT 'x' AS path", "CACHE TABLE ... AS digits_images is "
                          "refused"),
    "insert_overwrite_directory": (
        "INSERT OVERWRITE DIRECTORY '{scratch}/out' USING parquet SELECT path FROM digits_images",
        "INSERT OVERWRITE DIRECTORY '{scratch}/out' is refused: clients may write and load only inside the "
        "warehouse"),
    "insert_overwrite_local_directory": ("INSERT OVERWRITE LOCAL DIRECTORY '{scratch}/../escaped' SELECT 1",
                                         "INSERT OVERWRITE DIRECTORY '{scratch_parent}/escaped' is refused"),
    "load_data_local": ("LOAD DATA LOCAL INPATH '{scratch}/rows.txt' INTO TABLE client_lines",
                        "LOAD DATA LOCAL INPATH '{scratch}/rows.txt' is refused: clients may write and load only "
                        "inside the warehouse"),
    "table_location": ("CREATE TABLE outside (a INT) USING parquet LOCATION '{scratch}/table'",
                       "CREATE TABLE outside LOCATION 'file://{scratch}/table' is refused"),
    "jdbc": ("CREATE TEMPORARY VIEW metastore USING jdbc OPTIONS (url 'jdbc:derby:memory:x;create=true', "
             "dbtable 'SYS.SYSTABLES')", "USING jdbc is refused: a JDBC connection runs its driver"),
}


def test_a_client_table_and_view_are_still_allowed(guarded: Guarded) -> None:
    """What clients may do: tables in the warehouse, temporary views of new names, SQL functions."""
    port = guarded.server.port
    query(port, "CREATE TABLE client_lines (line STRING) STORED AS TEXTFILE")
    query(port, "INSERT INTO client_lines VALUES ('a')")
    query(port, "CREATE OR REPLACE TEMPORARY VIEW my_digits AS SELECT path FROM digits_images WHERE label = 3")
    query(port, "CREATE TEMPORARY FUNCTION twice(x INT) RETURNS INT RETURN 2 * x")
    threes = len(list((DIGITS / "data" / "images" / "test" / "3").glob("*.png")))
    assert query(port, "SELECT twice(count(*)) FROM my_digits") == [(2 * threes,)]
    assert query(port, "SELECT line FROM client_lines") == [("a",)]
    # ...but not a temporary view that would hide that table from everyone.
    message = refusal(port, "CREATE TEMPORARY VIEW client_lines AS SELECT 'b' AS line")
    assert (f"{GUARD}CREATE TEMPORARY VIEW client_lines is refused: it would hide the table default.client_lines "
            "from every client (all clients share the server's one session); choose another name") in message


@pytest.mark.parametrize("case", list(CASES))
def test_each_way_out_is_refused_with_its_message(guarded: Guarded, case: str) -> None:
    if case == "load_data_local":
        query(guarded.server.port, "CREATE TABLE IF NOT EXISTS client_lines (line STRING) STORED AS TEXTFILE")
    scratch = guarded.scratch.resolve()
    statement, expected = (text.format(scratch=scratch, scratch_parent=scratch.parent) for text in CASES[case])
    message = refusal(guarded.server.port, statement)
    assert GUARD + expected in message, message
    assert guarded.server.alive()
    assert sorted(p.name for p in guarded.scratch.iterdir()) == ["rows.txt"]  # nothing written there
    assert not (scratch.parent / "escaped").exists()


def test_sql_scripts_are_checked_statement_by_statement(guarded: Guarded) -> None:
    message = refusal(guarded.server.port, f"BEGIN SELECT 1; ADD JAR {guarded.scratch}/code.jar; END")
    assert GUARD + "ADD JAR is refused" in message, message


def test_settings_sent_with_a_connection_are_refused(guarded: Guarded) -> None:
    port = guarded.server.port
    [(_key, before)] = query(port, "SET spark.sql.shuffle.partitions")  # reading a setting is fine
    for sent in ({"set:hivevar:spark.sql.shuffle.partitions": "1"},
                 {"set:hiveconf:spark.sql.shuffle.partitions": "1"}):
        with pytest.raises(SqlinferError) as refused:
            query(port, "SELECT 1", configuration=sent)
        assert refused.value.code == "client.connect_failed"
        assert (f"{GUARD}setting spark.sql.shuffle.partitions is refused: all clients share the server's one "
                "session, so a setting would change every client's queries") in str(refused.value)
    assert query(port, "SET spark.sql.shuffle.partitions") == [("spark.sql.shuffle.partitions", before)]


def test_beeline_connects_and_is_refused_too(guarded: Guarded) -> None:
    """Hive's JDBC driver sends its fetch size, and the server re-applies its own hive.* settings, with
    every connection: both pass; a refused statement is refused for it as for PyHive."""
    url = f"jdbc:hive2://127.0.0.1:{guarded.server.port}/default"
    result = subprocess.run([str(beeline_path()), "-u", url, "--silent=true", "--showHeader=false",
                             "--outputformat=csv2", "--force=true", "-e",
                             f"SELECT 40 + 2; ADD JAR {guarded.scratch}/code.jar;"],
                            capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    assert "42" in result.stdout, result.stdout + result.stderr[-3000:]
    assert GUARD + "ADD JAR is refused" in result.stdout + result.stderr


def test_after_all_attempts_another_client_gets_the_same_answers(guarded: Guarded) -> None:
    assert guarded.server.alive()
    assert [row[0] for row in query(guarded.server.port, QUERY)] == guarded.labels
    assert not (guarded.scratch / "transform-ran").exists()


# --- the allow list, through the functions `sqlinfer sql --safe` calls -------------------------------

def test_serve_allow_gives_back_a_feature_and_only_that_one(allow_run: AllowRun) -> None:
    """`serve: {allow: [reflect]}`, through the functions `sqlinfer sql --safe` calls."""
    stdout, stderr = allow_run.proc.communicate(timeout=600)
    assert allow_run.proc.returncode == 0, stderr[-3000:]
    uuid, transform, add_jar = (json.loads(line) for line in stdout.splitlines()[-3:])
    assert uuid == {"rows": [[36]]}
    # With reflect allowed Spark's restricted mode is off: the guard's own rule refuses TRANSFORM.
    assert transform["refused"] == ("refused by the SQL guard: TRANSFORM ... USING is refused: it runs a shell "
                                    "command on the server (a trusted deployment can allow it: serve.allow: "
                                    "[transform]) [sql.refused]"), transform
    assert not allow_run.marker.exists()
    assert add_jar["refused"].startswith("refused by the SQL guard: ADD JAR is refused"), add_jar


def test_an_unknown_feature_in_serve_allow_is_a_config_error(tmp_path: Path) -> None:
    project = copy_digits(tmp_path / "digits")
    project_file = project / "sqlinfer_project.yml"
    line = len(project_file.read_text().splitlines()) + 2
    with project_file.open("a") as file:
        file.write("serve:\n  allow: [add_jar, relfect]\n")
    result = subprocess.run([SQLINFER, "serve", str(project), "--port", "0"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {project_file}:{line}: serve.allow: 'relfect' is not a feature the SQL guard can allow (did you "
        "mean 'reflect'?); use any of transform, reflect, add_jar, add_file, add_archive, create_function, set, "
        "external_paths, jdbc [config.invalid_value]\n")


# --- the shipped jar ------------------------------------------------------------------------------------

def test_the_shipped_jar_is_the_build_of_its_source(tmp_path: Path) -> None:
    if not (shutil.which("javac") and shutil.which("jar")):
        pytest.skip("needs a JDK (javac, jar)")
    rebuilt = tmp_path / "sqlinfer-spark.jar"
    subprocess.run([str(RESOURCES / "build_jar.sh"), sys.executable], check=True, timeout=300,
                   env={**os.environ, "SQLINFER_JAR": str(rebuilt)})

    def classes(jar: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(jar) as archive:
            return {name: archive.read(name) for name in archive.namelist() if name.endswith(".class")}

    assert classes(rebuilt).keys() == classes(SPARK_JAR).keys()
    assert classes(rebuilt) == classes(SPARK_JAR), "sqlinfer-spark.jar is stale: run sqlinfer/resources/build_jar.sh"


# --- docs/serve.md ----------------------------------------------------------------------------------------

def test_the_docs_examples_are_what_the_guard_does(guarded: Guarded, tmp_path: Path) -> None:
    """The refusal docs/serve.md shows is the one a client gets; its `allow:` example loads."""
    from sqlinfer.build.config import load_project_file

    catalogue = docs_catalogue()
    shown = catalogue.example("docs/serve.md", "sqlinfer SQL guard: ADD JAR is refused").text.strip()
    assert shown in refusal(guarded.server.port, f"ADD JAR {guarded.scratch}/code.jar")
    (tmp_path / "sqlinfer_project.yml").write_text(
        "name: docs\n" + catalogue.example("docs/serve.md", "allow: [reflect, add_jar]").text)
    config, _ = load_project_file(tmp_path)
    assert config.serve == {"allow": ["reflect", "add_jar"]}
