"""Spark's exceptions, translated into :class:`~sqlinfer.errors.BuildError` with the part a user
needs, and the end of the JVM under a command into :class:`~sqlinfer.errors.SessionError`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlinfer.errors import BuildError, SessionError, closest

# The last line of a worker traceback raised by sqlinfer.worker.score.InputError.
_SQLINFER_MESSAGE = re.compile(r"InputError: sqlinfer: ([^\n]*)")
# Spark's name for a function it does not know: UNRESOLVED_ROUTINE ... routine `name` ...
_UNKNOWN_FUNCTION = re.compile(r"UNRESOLVED_ROUTINE\].*?routine `([^`]+)`")

# A Python worker process that ended in the middle of a task (killed from outside or by the
# kernel's out-of-memory killer, a crash in native code, os._exit in a model's own code), and how
# many attempts Spark gave the task before it failed the job.
_WORKER_DIED = re.compile(r"Python worker exited unexpectedly|Python worker died")
_TASK_FAILED = re.compile(r"Task (\S+) in stage (\S+) failed (\d+) times?")


def worker_died(text: str) -> BuildError | None:
    """A BuildError saying that a Python worker died and how to let Spark retry the task; None
    when ``text`` (a failed query's error) is about something else."""
    if not _WORKER_DIED.search(text):
        return None
    found = _TASK_FAILED.search(text)
    task = f" (task {found.group(1)} of stage {found.group(2)})" if found else ""
    attempts = int(found.group(3)) if found else 1
    if attempts <= 1:
        advice = ("Spark tried the task once and gave up: allow retries with `--master local[N,2]` on a local "
                  "master (N cores, each task tried up to 2 times) or `--conf spark.task.maxFailures=4` on a "
                  "cluster")
    else:
        advice = (f"it died on each of the task's {attempts} attempts, so it is not a passing fault: see Spark's "
                  "log for the worker's last lines, and check the workers' memory")
    return BuildError(f"a Python worker died while running the query{task}: it was killed (out of memory, "
                      f"or by another process) or crashed. {advice}", code="udf.worker_died")


def translate(exc: BaseException, functions: Iterable[str] = ()) -> BuildError | None:
    """A BuildError for Spark analysis/parse errors and failed UDF tasks; None for anything else.
    ``functions`` are the project's model functions, named when the SQL calls an unknown one."""
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import AnalysisException, ParseException, PythonException
        from pyspark.errors.exceptions.captured import CapturedException
    except ImportError:  # the worker side, without pyspark: nothing of Spark's to translate
        return None
    text = _safe_text(exc)
    found = _SQLINFER_MESSAGE.search(text)
    if found:
        return BuildError(found.group(1), code="udf.failed")
    died = worker_died(text)
    if died is not None:
        return died
    if isinstance(exc, ParseException):
        return BuildError(f"SQL syntax error: {first_line(text)}", code="sql.syntax")
    if isinstance(exc, AnalysisException):
        return BuildError(first_line(text) + _function_hint(text, functions), code="sql.analysis")
    if isinstance(exc, Py4JJavaError):
        return BuildError(f"query failed: {_java_message(exc)}", code="sql.failed")
    if isinstance(exc, (PythonException, CapturedException)):
        return BuildError(f"query failed: {first_line(text)}", code="sql.failed")
    return None


def jvm_ended(exc: BaseException | None = None) -> SessionError | None:
    """A SessionError when the session's JVM has ended under the command (killed, out of memory,
    ``System.exit`` from SQL): ``exc`` is what the Java bridge raised then, or None to ask after
    the fact (a build whose nodes failed). None while Spark runs, or for an exception that is not
    the bridge's.

    py4j's errors (an empty answer, a refused connection, a job cancelled or a null pointer as
    Spark shuts down) say nothing about why; the JVM's exit code and Spark's log do.
    """
    try:
        from py4j.protocol import Py4JError, Py4JJavaError
        from pyspark import SparkContext
    except ImportError:
        return None
    if exc is not None and not isinstance(exc, (Py4JError, ConnectionError)):
        return None
    process = getattr(SparkContext._gateway, "proc", None)
    if process is None:
        return None
    # A Java error while Spark still runs is the query's own; otherwise the JVM is going down,
    # and is given the moment it takes to be gone.
    if isinstance(exc, Py4JJavaError) or exc is None:
        going = process.poll() is not None or _spark_stopped(SparkContext._active_spark_context)
    else:
        going = True
    if not going:
        return None
    try:
        code = process.wait(timeout=10)
    except Exception:  # still running after all: not ours to explain
        return None
    return SessionError(f"the Spark JVM ended unexpectedly (exit code {code}) while the command ran",
                        code="session.jvm_failed")


def _spark_stopped(context: Any) -> bool:
    """Whether the session's SparkContext has stopped (or cannot say, its JVM being gone)."""
    try:
        return context is None or bool(context._jsc.sc().isStopped())
    except Exception:  # the bridge is down: so is Spark
        return True


def _safe_text(exc: BaseException) -> str:
    """``str(exc)``, or its type when that fails (a Py4JJavaError asks the JVM, which may be gone)."""
    try:
        return str(exc)
    except Exception:  # the JVM is gone
        return type(exc).__name__


def _java_message(exc: BaseException) -> str:
    """The first line of a Py4JJavaError: Java's exception and message, not py4j's ``An error
    occurred while calling o105.collectToPython.``; the class without its package."""
    java = getattr(exc, "java_exception", None)
    try:
        text = first_line(str(java.toString())) if java is not None else ""
    except Exception:  # the JVM is gone: py4j's own line is all there is
        text = ""
    return re.sub(r"^(?:[a-z_$][\w$]*\.)+(?=[A-Z])", "", text) or first_line(_safe_text(exc))


def _function_hint(text: str, functions: Iterable[str]) -> str:
    """For an unknown function: the closest model function and the list of them."""
    found = _UNKNOWN_FUNCTION.search(text)
    if found is None:
        return ""
    names = sorted(functions)
    listed = ", ".join(names) if names else "none"
    return f"{closest(found.group(1).split('.')[-1], names)} (the project's model functions: {listed})"


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


_LINE_PATTERNS = (re.compile(r"== SQL \(line (\d+), position \d+\) =="), re.compile(r"\bline (\d+),? pos \d+"),
                  re.compile(r"\bline (\d+):\d+"))


def sql_line(exc: BaseException) -> int | None:
    """The line of the SQL text that a Spark parse or analysis error points at, if it says."""
    text = str(exc)
    for pattern in _LINE_PATTERNS:
        found = pattern.search(text)
        if found:
            return int(found.group(1))
    return None
