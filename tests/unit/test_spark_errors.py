"""Reading Spark's error texts without Spark: the SQL line an error points at, in each of the
shapes Spark writes it, and an error's first line. (Translating real Spark exceptions needs
pyspark's exception classes from a real session: tests/functional/test_spark_errors.py.)"""

from __future__ import annotations

import pytest

from sqlinfer.runtime.spark_errors import first_line, sql_line

# Spark 4's analysis errors carry a query context block.
ANALYSIS = ("[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function parameter with name `splitt` "
            "cannot be resolved. Did you mean one of the following? [`split`, `label`]. SQLSTATE: 42703;\n"
            "'Aggregate ['splitt], ['splitt]\n+- SubqueryAlias spark_catalog.db.t\n\n"
            "== SQL (line 7, position 10) ==\nGROUP BY splitt\n         ^^^^^^\n")
# Parse errors: `(line N, pos M)` after the message.
PARSE = ("\n[PARSE_SYNTAX_ERROR] Syntax error at or near '='. SQLSTATE: 42601 (line 4, pos 14)\n\n== SQL ==\n"
         "SELECT path\nFROM t\nWHERE label = = 1\n--------------^^^\n")
# Older analysis errors: `; line N pos M`.
OLD_ANALYSIS = "Table or view not found: nope; line 3 pos 5;\n'Project [*]\n+- 'UnresolvedRelation [nope]\n"
# Hive/Thrift errors: `line N:M`.
HIVE = "Error while compiling statement: FAILED: ParseException line 2:7 cannot recognize input near 'FROM'"


@pytest.mark.parametrize(("text", "line"), [
    (ANALYSIS, 7),
    (PARSE, 4),
    (OLD_ANALYSIS, 3),
    (HIVE, 2),
    ("[DIVIDE_BY_ZERO] Division by zero. SQLSTATE: 22012", None),
])
def test_sql_line(text: str, line: int | None) -> None:
    assert sql_line(Exception(text)) == line


def test_the_query_context_wins_over_an_earlier_position() -> None:
    text = "something at line 1 pos 3\n== SQL (line 9, position 2) ==\nx\n"
    assert sql_line(Exception(text)) == 9


@pytest.mark.parametrize(("text", "first"), [
    (PARSE, "[PARSE_SYNTAX_ERROR] Syntax error at or near '='. SQLSTATE: 42601 (line 4, pos 14)"),
    (OLD_ANALYSIS, "Table or view not found: nope; line 3 pos 5;"),
    ("   \n\n  one line  \nmore", "one line"),
    ("", ""),
])
def test_first_line(text: str, first: str) -> None:
    assert first_line(text) == first


def test_an_exception_that_is_not_sparks_is_not_translated() -> None:
    # A plain Python exception is not Spark's: translate leaves it to the caller.
    from sqlinfer.runtime.spark_errors import translate

    assert translate(ValueError("line 3 pos 5")) is None
