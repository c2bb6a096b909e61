"""The session's JVM: where its output goes (Spark's log), its end, and quieting what PySpark
prints about it and about SQL errors.

Everything the JVM writes (Spark's log lines, the Python workers' tracebacks and output, which
the JVM copies to its stderr, the Java launcher's messages) goes to the project's
``target/logs/spark.log``, not to the terminal: the terminal keeps sqlinfer's own lines, and an
error is the one line docs/errors.md promises, naming that file (:func:`spark_log`).

PySpark leaves the JVM to notice that Python is gone (its stdin closes) and shut down on its own,
seconds after the command has returned: meanwhile it still holds the embedded metastore, and the
next command on the project would find it locked. So sqlinfer ends it itself and waits for it.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlinfer.runtime import jvm_cache, kept_session, timeline

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


_ENDING: set[int] = set()  # JVM pids whose end this process waits for at exit
_SPARK_LOG: list[Path] = []  # the log of the JVM this process started, once it has started one


def open_spark_log(path: Path) -> IO[bytes]:
    """The file a JVM about to start writes its output to; :func:`spark_log` names it from now on.

    Each JVM starts a new log, so the file an error names holds that command's log only; the
    previous one is kept as ``spark.log.1`` (a build's log survives the `sqlinfer sql` run after it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.replace(path.with_name(f"{path.name}.1"))
    _SPARK_LOG[:] = [path]
    return path.open("ab")


def forget_spark_log() -> None:
    """A command begins: until it starts a JVM, it has no Spark log to name. (A command run in a
    process that ran others before, as the tests and the Python API do, must not send its user to
    the log of a JVM it never used. A kept session's commands all run in the JVM its first one
    started, whose log each error names.)"""
    if not kept_session.serving():
        _SPARK_LOG.clear()


def spark_log() -> Path | None:
    """The Spark log of the JVM this process started (:func:`open_spark_log`); None when it started none."""
    return _SPARK_LOG[0] if _SPARK_LOG else None


def log_error(line: str, error: BaseException, detail: str = "") -> None:
    """Append the error ``line`` a command printed, and what it left out, to the Spark log: the
    rest of a message longer than a line, ``detail``, and for each other exception behind
    ``error`` its Python traceback and, for Spark's, the Java stack trace.

    Spark logs a failed task itself, but not an error it hands back to Python (a parse or analysis
    error): that detail would be nowhere without this. One ``os.write`` in append mode, so the
    block is not interleaved with the JVM's own lines.
    """
    from sqlinfer.errors import SqlinferError

    path = spark_log()
    if path is None:
        return
    parts = [f"{time.strftime('%y/%m/%d %H:%M:%S')} ERROR sqlinfer: {line}\n"]
    for exc in exception_chain(error):
        if isinstance(exc, SqlinferError):  # sqlinfer's own: its traceback is not the user's business
            if "\n" in exc.message.strip():
                parts.append(f"{exc.message.strip()}\n")
            continue
        parts.extend(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
        java = _java_stack(exc)
        if java:
            parts.append(f"Java stack trace:\n{java.rstrip()}\n")
    if detail:
        parts.append(f"{detail.rstrip()}\n")
    _append(path, "".join(parts))


def _append(path: Path, text: str) -> None:
    """``text`` at the end of ``path`` in one ``write`` (O_APPEND: not interleaved with the JVM's lines)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode(errors="replace"))
        finally:
            os.close(fd)
    except OSError:  # the log is a convenience: what matters has been printed already
        pass


class _SparkLogHandler(logging.Handler):
    """Python's log records into the Spark log once there is one, else to stderr as Python would."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
        except Exception:  # a record that cannot be formatted: logging's own policy
            self.handleError(record)
            return
        path = spark_log()
        if path is None:
            sys.stderr.write(text)
        else:
            _append(path, text)


def python_logs_to_spark_log() -> None:
    """Send Python's log records of WARNING and above (py4j's above all) to the Spark log, for a
    command line: py4j logs a traceback on the root logger when the JVM goes away under a call,
    through ``logging.exception``, which also installs a stderr handler when the root logger has
    none; with this one installed first, neither reaches the terminal."""
    root = logging.getLogger()
    if not any(isinstance(handler, _SparkLogHandler) for handler in root.handlers):
        handler = _SparkLogHandler(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s (Python): %(message)s",
                                               "%y/%m/%d %H:%M:%S"))
        root.addHandler(handler)


def exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions behind it (``__cause__``, else ``__context__``, even after
    ``raise ... from None``: that hides the context from the terminal, not from the log)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_spark_exception(exc: BaseException) -> bool:
    """Whether ``exc`` comes from Spark or its Java bridge (pyspark's or py4j's classes)."""
    return type(exc).__module__.split(".")[0] in ("pyspark", "py4j")


def _java_stack(exc: BaseException) -> str:
    """The Java stack trace behind one of pyspark's exceptions (its CapturedException keeps Spark's
    own text, which its str() leaves out); '' for others. A py4j Py4JJavaError needs none: its
    str(), in the Python traceback, is the Java stack trace."""
    captured = getattr(exc, "_stackTrace", None)
    return captured if isinstance(captured, str) else ""


def jvm_process(spark: SparkSession) -> Any:
    """PySpark's JVM child process (a Popen), or None when this process did not launch it."""
    return getattr(spark.sparkContext._gateway, "proc", None)


def end_jvm(spark: SparkSession, *, first: Callable[[], None] | None = None, timeout_s: float = 120,
            hand_off: Callable[[int], bool] | None = None) -> int | None:
    """Stop Spark, then end its JVM and wait for it; returns the JVM's exit code (None if unknown).

    ``first`` runs before Spark stops (e.g. stopping the Thrift server). ``hand_off``, given the
    JVM's pid once Spark has stopped, may take over waiting for its end (True): the JVM is then
    asked to end and not waited for. Errors are swallowed on purpose: the JVM may be gone or going
    already (a signal to the whole process group reaches it too), and whatever fails, the one
    thing left to do is to make sure it ends.
    """
    process = jvm_process(spark)
    with quiet_py4j():
        if process is None or process.poll() is None:
            # Stop Spark from here first: a JVM that stops with a task still running (a warm-up
            # after a quick command) logs errors about it.
            close_accumulator_server_without_waiting(spark)
            for step in (first, spark.sparkContext.cancelAllJobs, spark.stop):
                try:
                    if step is not None:
                        step()
                except Exception:  # stopped already, or the JVM is gone: go on to the next step
                    continue
            timeline.mark("Spark stopped")
        if process is None:
            return None
        handed_off = hand_off is not None and process.poll() is None and hand_off(process.pid)
        try:
            # Close py4j's server and connections first: their JVM threads sit in native socket
            # reads, and a JVM that exits with a thread in native code waits 300 ms for it
            # (HotSpot's VM_Exit); closed, the JVM exits in 0.07 s instead of 0.39 s.
            spark.sparkContext._gateway.shutdown()
        except Exception:  # gone already: closing stdin below ends the JVM all the same
            pass
        try:
            process.stdin.close()  # the JVM's signal to exit (PythonGatewayServer)
            if handed_off:
                timeline.mark("JVM ending in the background")
                return None
            code: int = process.wait(timeout=timeout_s)
            timeline.mark("JVM exited")
            return code
        except Exception:  # hanging: it must not outlive us
            process.kill()
            process.wait(timeout=10)
            return None


def close_accumulator_server_without_waiting(spark: SparkSession) -> None:
    """Make ``spark.stop()`` close PySpark's accumulator server without waiting for its thread.

    PySpark's stop waits for that thread, and the thread notices late: its connection handler
    polls once a second, its accept loop every half second (0.4 to 1.0 s of every command's
    exit, measured). At exit nothing waits for accumulator updates any more, and the thread is
    a daemon thread, which ends with the process. The server still closes after the JVM's
    SparkContext has stopped, where PySpark closes it.
    """
    server = getattr(spark.sparkContext, "_accumulatorServer", None)
    if server is None:
        return

    def close() -> None:
        server.server_shutdown = True  # the connection handler's loop ends at its next poll
        server._BaseServer__shutdown_request = True  # and serve_forever's after it
        server.server_close()
        if isinstance(server.server_address, str):  # a Unix domain socket's file
            Path(server.server_address).unlink(missing_ok=True)

    server.shutdown = close


def end_jvm_at_exit(spark: SparkSession, archive: jvm_cache.Plan) -> None:
    """When this process exits, end the session's JVM and wait for it (see the module docstring).
    A JVM that writes the class archive as it exits (10-25 s, :mod:`.jvm_cache`) is not waited
    for: it lets go of the embedded metastore first, and a detached finisher waits for it."""
    proc = jvm_process(spark)
    if proc is None or proc.stdin is None or proc.pid in _ENDING:
        archive.abandon()  # a JVM this call did not start
        return
    _ENDING.add(proc.pid)

    def hand_off(pid: int) -> bool:
        try:
            class_path = str(spark.sparkContext._jvm.System.getProperty("java.class.path"))
        except Exception:  # the JVM is going already: wait for it, as for any other
            return False
        release_embedded_metastore(spark)
        return archive.finish_later(pid, class_path)

    def end() -> None:
        # A warm-up thread may still wait on the JVM; py4j would log its broken call as an error.
        logging.getLogger("py4j").setLevel(logging.CRITICAL)
        archive.finish(end_jvm(spark, hand_off=hand_off if archive.write else None))

    atexit.register(end)


def release_embedded_metastore(spark: SparkSession) -> None:
    """Shut down the embedded Derby metastore this session's JVM has open, so that the next
    command can open it while this JVM is still busy exiting (it holds the database until then)."""
    from sqlinfer.runtime.metastore import derby_folder, metastore_holder

    folder = derby_folder(spark.sparkContext.getConf().get("spark.hadoop.javax.jdo.option.ConnectionURL", ""))
    if folder is None or metastore_holder(folder) is None:
        return  # another metastore, or this session never opened it
    try:
        # Derby's way to shut down every database it has open; it answers with an exception.
        spark.sparkContext._jvm.java.sql.DriverManager.getConnection("jdbc:derby:;shutdown=true")
    except Exception:  # the expected "Derby system shutdown", or the JVM is going anyway
        pass


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


def quiet_arrow_udf_hint() -> None:
    """PySpark warns at each ``arrow_udf(f, type, ArrowUDFType...)`` that type hints are preferred.
    sqlinfer's calls silence it within ``warnings.catch_warnings()``, but the warm-up thread and
    the main thread register UDFs at once, and catch_warnings is not thread-safe: one restores the
    filters while the other still relies on them, and the hint reached the terminal now and then.
    A filter installed before either starts stays in whatever each restores."""
    import warnings

    warnings.filterwarnings("ignore", message="It is preferred to specify type hints for arrow UDF",
                            category=UserWarning)


def quiet_query_error_logs() -> None:
    """PySpark logs every SQL error as JSON with a JVM stack trace before raising it; sqlinfer
    reports the same error once, with the file and line, so those logs are noise."""
    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
