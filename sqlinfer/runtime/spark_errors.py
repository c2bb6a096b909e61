"""Spark's exceptions, translated into :class:`~sqlinfer.errors.BuildError` with the part a user needs."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlinfer.errors import BuildError, closest

# The last line of a worker traceback raised by sqlinfer.worker.score.InputError.
_SQLINFER_MESSAGE = re.compile(r"InputError: sqlinfer: ([^\n]*)")
# Spark's name for a function it does not know: UNRESOLVED_ROUTINE ... routine `name` ...
_UNKNOWN_FUNCTION = re.compile(r"UNRESOLVED_ROUTINE\].*?routine `([^`]+)`")


def translate(exc: BaseException, functions: Iterable[str] = ()) -> BuildError | None:
    """A BuildError for Spark analysis/parse errors and failed UDF tasks; None for anything else.
    ``functions`` are the project's model functions, named when the SQL calls an unknown one."""
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import AnalysisException, ParseException, PythonException
        from pyspark.errors.exceptions.captured import CapturedException
    except ImportError:  # the worker side, without pyspark: nothing of Spark's to translate
        return None
    text = str(exc)
    found = _SQLINFER_MESSAGE.search(text)
    if found:
        return BuildError(found.group(1), code="udf.failed")
    if isinstance(exc, ParseException):
        return BuildError(f"SQL syntax error: {first_line(text)}", code="sql.syntax")
    if isinstance(exc, AnalysisException):
        return BuildError(first_line(text) + _function_hint(text, functions), code="sql.analysis")
    if isinstance(exc, (PythonException, Py4JJavaError, CapturedException)):
        return BuildError(f"query failed: {first_line(text)}", code="sql.failed")
    return None


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
