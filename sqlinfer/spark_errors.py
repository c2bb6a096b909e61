"""Spark's exceptions, translated into :class:`SqlinferError` with the part a user needs."""

from __future__ import annotations

import re

from sqlinfer.errors import SqlinferError

# The last line of a worker traceback raised by sqlinfer.worker.InputError.
_SQLINFER_MESSAGE = re.compile(r"InputError: sqlinfer: ([^\n]*)")


def translate(exc: BaseException) -> SqlinferError | None:
    """A SqlinferError for Spark analysis/parse errors and failed UDF tasks; None for anything else."""
    try:
        from pyspark.errors import AnalysisException, ParseException, PythonException
        from pyspark.errors.exceptions.captured import CapturedException
        from py4j.protocol import Py4JJavaError
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return None
    text = str(exc)
    found = _SQLINFER_MESSAGE.search(text)
    if found:
        return SqlinferError(found.group(1), code="udf.failed")
    if isinstance(exc, ParseException):
        return SqlinferError(f"SQL syntax error: {first_line(text)}", code="sql.syntax")
    if isinstance(exc, AnalysisException):
        return SqlinferError(first_line(text), code="sql.analysis")
    if isinstance(exc, (PythonException, Py4JJavaError, CapturedException)):
        return SqlinferError(f"query failed: {first_line(text)}", code="sql.failed")
    return None


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
