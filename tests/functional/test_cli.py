"""The command line on a real Spark session: `sql` on the digits example (printing, writing a file,
a clear error for an unknown function), and commands that leave nothing running."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

SQLINFER = [sys.executable, "-m", "sqlinfer"]


def run(*args: str, cwd: Path | None = None, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SQLINFER_SPARK_LOG_LEVEL": "ERROR", **env_vars}
    return subprocess.run([*SQLINFER, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_sql_writes_predictions_to_csv(digits_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    query = ("SELECT path, label, digits_predict(content) AS pred FROM digits_images "
             "WHERE split = 'test' ORDER BY path")
    result = run("sql", str(digits_copy), query, "--output", str(out), "--conf", "spark.ui.enabled=false",
                 "--master", "local[2]")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 450 rows to {out}\n"
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 450
    assert list(rows[0]) == ["path", "label", "pred"]
    assert rows[0]["pred"].startswith('{"label":"')  # a struct column is written as JSON text in CSV
    correct = sum(1 for r in rows if f'"index":{r["label"]},' in r["pred"])
    assert correct / len(rows) >= 0.95


def test_sql_unknown_function_names_the_closest_model_function(digits_copy: Path) -> None:
    result = run("sql", str(digits_copy), "SELECT nope_predict(content) FROM digits_images",
                 "--conf", "spark.ui.enabled=false", "--master", "local[1]")
    assert result.returncode == 1
    *warnings, error = result.stderr.splitlines()  # views over tables not built yet: warnings, then the error
    assert all(line.startswith("warning: view ") for line in warnings), result.stderr
    assert error.startswith("error: [UNRESOLVED_ROUTINE] Cannot resolve routine `nope_predict`"), error
    assert error.endswith(" (did you mean 'digits_predict'?) (the project's model functions: digits_predict, "
                          "digits_scores) "
                          f"(Spark's log: {digits_copy}/target/logs/spark.log) [sql.analysis]"), error


def own_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in command:
                found.append(command)
    return found


def test_commands_run_back_to_back_and_leave_nothing_running(digits_copy: Path, tmp_path: Path) -> None:
    """A command ends its JVM (and the worker daemon) before it returns: the next command on the
    project finds the embedded metastore free at once, and no process of it is left. The Hive
    session folder each command's metastore client makes goes under the project's target/, not
    the JVM's temp folder (Linux: /tmp, whatever TMPDIR says), and the next command clears it."""
    own_tmp = tmp_path / "tmp"  # the early daemon's socket folder goes here, away from other runs'
    own_tmp.mkdir()
    jvm_tmp, hive_scratch = Path("/tmp"), digits_copy / "target" / "tmp" / "hive"
    sessions = []
    for _ in range(2):
        before = set(jvm_tmp.glob("*_resources"))
        result = run("sql", str(digits_copy), "SHOW TABLES", "--conf", "spark.ui.enabled=false",
                     TMPDIR=str(own_tmp))
        assert result.returncode == 0, result.stderr
        assert "digits_images" in result.stdout
        assert own_processes(str(digits_copy)) == []  # no JVM (its command line names target/)
        assert sorted(own_tmp.glob("sqlinfer-daemon-*")) == []  # early daemon's folder removed
        assert set(jvm_tmp.glob("*_resources")) - before == set()
        sessions.append([folder.name for folder in hive_scratch.glob("*_resources")])
    # One folder each time, the second command's own: the first command's was cleared.
    assert len(sessions[0]) == len(sessions[1]) == 1 and sessions[0] != sessions[1], sessions


def test_a_command_leaves_no_socket_files_behind(digits_copy: Path) -> None:
    """The JVM and PySpark's accumulator server talk over Unix domain sockets under the temp
    folder; sqlinfer closes the accumulator server itself at exit (without PySpark's wait for
    its thread, sqlinfer/runtime/jvm.py) and must remove its socket file as PySpark would."""
    folder = Path(tempfile.gettempdir())
    before = set(folder.glob(".*.sock"))
    result = run("sql", str(digits_copy), "SELECT 1 AS one")
    assert result.returncode == 0, result.stderr
    assert set(folder.glob(".*.sock")) - before == set()


def test_timings_shows_where_a_short_commands_seconds_went(digits_copy: Path) -> None:
    result = run("--timings", "sql", str(digits_copy), "SELECT 1 AS one")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "1 rows"
    stderr = result.stderr.splitlines()
    header = "timings (seconds since the process started):"
    assert stderr.count(header) == 1
    lines = stderr[stderr.index(header) + 1:]
    moments = [line.split(")  ", 1)[1] for line in lines]
    # The models resolve on this thread while the JVM starts on another, before anything registers.
    assert moments.index("models resolved") < moments.index("functions and sources registered")
    # The machine's first such command has its JVM write the class archive, and does not wait for it.
    ended = "JVM ending in the background" if "JVM ending in the background" in moments else "JVM exited"
    assert [m for m in moments if m != "models resolved"] == [
        "command line read", "PySpark imported", "JVM started", "Spark session ready",
        "model functions registered", "functions and sources registered", "query answered", "Spark stopped",
        ended, "exit"]
    seconds = [float(line.split(" s ")[0]) for line in lines]
    assert seconds == sorted(seconds) and 0 < seconds[-1] < 120
