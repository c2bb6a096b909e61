"""The end of the session's JVM, and quieting what PySpark prints about it and about SQL errors.

PySpark leaves the JVM to notice that Python is gone (its stdin closes) and shut down on its own,
seconds after the command has returned: meanwhile it still holds the embedded metastore, and the
next command on the project would find it locked. So sqlinfer ends it itself and waits for it.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlinfer.runtime import jvm_cache

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


_ENDING: set[int] = set()  # JVM pids whose end this process waits for at exit


def jvm_process(spark: SparkSession) -> Any:
    """PySpark's JVM child process (a Popen), or None when this process did not launch it."""
    return getattr(spark.sparkContext._gateway, "proc", None)


def end_jvm(spark: SparkSession, *, first: Callable[[], None] | None = None, timeout_s: float = 120) -> int | None:
    """Stop Spark, then end its JVM and wait for it; returns the JVM's exit code (None if unknown).

    ``first`` runs before Spark stops (e.g. stopping the Thrift server). Errors are swallowed on
    purpose: the JVM may be gone or going already (a signal to the whole process group reaches it
    too), and whatever fails, the one thing left to do is to make sure it ends.
    """
    process = jvm_process(spark)
    with quiet_py4j():
        if process is None or process.poll() is None:
            # Stop Spark from here first: a JVM that stops with a task still running (a warm-up
            # after a quick command) logs errors about it.
            for step in (first, spark.sparkContext.cancelAllJobs, spark.stop):
                try:
                    if step is not None:
                        step()
                except Exception:  # stopped already, or the JVM is gone: go on to the next step
                    continue
        if process is None:
            return None
        try:
            process.stdin.close()  # the JVM's signal to exit (PythonGatewayServer)
            code: int = process.wait(timeout=timeout_s)
            return code
        except Exception:  # hanging: it must not outlive us
            process.kill()
            process.wait(timeout=10)
            return None


def end_jvm_at_exit(spark: SparkSession, archive: jvm_cache.Plan) -> None:
    """When this process exits, end the session's JVM and wait for it (see the module docstring).
    Waiting also lets a JVM that writes the class archive finish it (:mod:`.jvm_cache`)."""
    proc = jvm_process(spark)
    if proc is None or proc.stdin is None or proc.pid in _ENDING:
        archive.abandon()  # a JVM this call did not start
        return
    _ENDING.add(proc.pid)

    def end() -> None:
        # A warm-up thread may still wait on the JVM; py4j would log its broken call as an error.
        logging.getLogger("py4j").setLevel(logging.CRITICAL)
        archive.finish(end_jvm(spark))

    atexit.register(end)


@contextmanager
def quiet_py4j() -> Iterator[None]:
    """Drop py4j's tracebacks for calls into a dying JVM (it logs them on the root logger)."""

    def not_py4j(record: logging.LogRecord) -> bool:
        return f"{os.sep}py4j{os.sep}" not in record.pathname

    root = logging.getLogger()
    root.addFilter(not_py4j)
    try:
        yield
    finally:
        root.removeFilter(not_py4j)


def quiet_accumulator_server(spark: SparkSession) -> None:
    """When the JVM ends before Python (a signal to the whole process group), PySpark's accumulator
    server prints an EOFError traceback from its thread; the end of the connection is expected."""
    server = getattr(spark.sparkContext, "_accumulatorServer", None)
    if server is not None:
        server.handle_error = lambda _request, _address: None


def quiet_query_error_logs() -> None:
    """PySpark logs every SQL error as JSON with a JVM stack trace before raising it; sqlinfer
    reports the same error once, with the file and line, so those logs are noise."""
    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
