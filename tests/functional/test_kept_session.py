"""The kept session on a real JVM, through the real command line: builds and queries after the
first skip the JVM's start, no temporary view carries over from one command to the next, errors
still name Spark's log, another --conf restarts it, Ctrl-C cancels a query over there, and a
command without SQLINFER_KEEP_SESSION takes the metastore over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqlinfer.runtime import kept_session

pytestmark = pytest.mark.spark

SQLINFER = [sys.executable, "-m", "sqlinfer"]
SPARK = ["--master", "local[2]", "--conf", "spark.ui.enabled=false"]


def run(*args: str, keep: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SQLINFER_SPARK_LOG_LEVEL": "ERROR"}
    env.pop(kept_session.ENV, None)
    if keep:
        env[kept_session.ENV] = "5"
    return subprocess.run([*SQLINFER, *args], capture_output=True, text=True, env=env, timeout=600)


def started_sessions(project: Path) -> int:
    log = project / "target" / kept_session.LOG
    return log.read_text().count(" listening on ") if log.exists() else 0


def test_commands_share_one_kept_session(digits_copy: Path) -> None:
    project = str(digits_copy)
    socket_file = kept_session.socket_path(digits_copy / "target")
    try:
        first = run("--timings", "build", project, *SPARK)
        assert first.returncode == 0, first.stderr
        assert "JVM started" in first.stderr
        assert "Done in" in first.stdout and "4 ok, 0 error" in first.stdout, first.stdout

        second = run("--timings", "build", project, *SPARK)
        assert second.returncode == 0, second.stderr
        assert "command received by the kept session" in second.stderr
        assert "JVM started" not in second.stderr  # the first command's JVM did this build
        assert "4 ok, 0 error" in second.stdout
        assert started_sessions(digits_copy) == 1

        # Each command gets a fresh SparkSession: a temporary view does not outlive its command.
        made = run("sql", project, "CREATE TEMPORARY VIEW leftover AS SELECT 1 AS x", *SPARK)
        assert made.returncode == 0, made.stderr
        gone = run("sql", project, "SELECT * FROM leftover", *SPARK)
        assert gone.returncode == 1
        error = gone.stderr.splitlines()[-1]
        assert error.startswith("error: [TABLE_OR_VIEW_NOT_FOUND] The table or view `leftover` cannot be found")
        assert error.endswith(f"(Spark's log: {project}/target/logs/spark.log) [sql.analysis]"), error

        counted = run("sql", project, "SELECT count(*) AS n FROM digit_predictions", *SPARK)
        assert counted.returncode == 0, counted.stderr
        assert counted.stdout.splitlines()[2].strip() == "1797"
        assert started_sessions(digits_copy) == 1

        # Another setting needs another session: the kept one ends, a new one answers.
        other = run("sql", project, "SELECT 41 + 1 AS answer", *SPARK, "--conf", "spark.sql.shuffle.partitions=3")
        assert other.returncode == 0, other.stderr
        assert other.stdout.splitlines()[2].strip() == "42"
        assert started_sessions(digits_copy) == 2
        assert "a command needs another session" in (digits_copy / "target" / kept_session.LOG).read_text()

        # Ctrl-C reaches the command in the kept session: its jobs are cancelled, the session ends.
        query = "SELECT count(*) FROM range(0, 1000000000000) WHERE id % 7 = 3"  # minutes of work
        endless = subprocess.Popen([*SQLINFER, "sql", project, query, *SPARK],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, kept_session.ENV: "5"},
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        log = digits_copy / "target" / kept_session.LOG
        deadline = time.monotonic() + 60
        while started_sessions(digits_copy) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # its key is not the running session's: a third one starts
        time.sleep(8)  # the session starts, the query runs (Ctrl-C in either stage ends the same way)
        endless.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        out, err = endless.communicate(timeout=120)
        assert endless.returncode == 1, (out, err)
        assert err.strip().endswith("Aborted!"), err
        assert time.monotonic() - interrupted_at < 30
        assert log.read_text().rstrip().endswith("the command was interrupted, or the JVM has gone: ending")
        assert run("stop", project).stdout == "No kept session runs for this project.\n"

        # A command without the variable stops a kept session that holds the metastore, then runs.
        assert run("sql", project, "SELECT 1", *SPARK).returncode == 0
        assert socket_file.exists() and started_sessions(digits_copy) == 4  # 3: the endless query's
        alone = run("sql", project, "SELECT count(*) AS n FROM digit_predictions", *SPARK, keep=False)
        assert alone.returncode == 0, alone.stderr
        assert alone.stdout.splitlines()[2].strip() == "1797"
        assert not socket_file.exists()
    finally:
        kept_session.stop(digits_copy / "target")
