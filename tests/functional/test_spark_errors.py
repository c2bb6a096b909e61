"""Spark's real exceptions, translated into the errors users see: the code, the message's first line,
the SQL line it points at, and for an unknown function the closest model function."""

from __future__ import annotations

import pytest

from sqlinfer.runtime.spark_errors import sql_line, translate

pytestmark = pytest.mark.spark


def spark_error(spark, sql: str) -> BaseException:
    with pytest.raises(Exception) as info:
        spark.sql(sql).collect()
    return info.value


def test_unknown_function_names_the_closest_model_function(spark) -> None:
    error = translate(spark_error(spark, "SELECT digits_predcit(1)"), functions=["digits_predict"])
    assert error is not None
    assert error.code == "sql.analysis"
    assert error.message.startswith("[UNRESOLVED_ROUTINE] Cannot resolve routine `digits_predcit` on search path ")
    assert error.message.endswith("SQLSTATE: 42883; line 1 pos 7 (did you mean 'digits_predict'?) "
                                  "(the project's model functions: digits_predict)")


def test_unknown_function_lists_every_model_function_when_none_is_close(spark) -> None:
    error = translate(spark_error(spark, "SELECT nothing_like_it(1)"), functions=["b_predict", "a_predict"])
    assert error is not None
    assert error.code == "sql.analysis"
    assert error.message.startswith("[UNRESOLVED_ROUTINE] Cannot resolve routine `nothing_like_it` on search path ")
    # No suggestion: straight from Spark's position to the list.
    assert error.message.endswith("SQLSTATE: 42883; line 1 pos 7 (the project's model functions: a_predict, b_predict)")


def test_unknown_function_in_a_project_without_models(spark) -> None:
    error = translate(spark_error(spark, "SELECT digits_predcit(1)"))
    assert error is not None
    assert error.message.endswith("SQLSTATE: 42883; line 1 pos 7 (the project's model functions: none)")


def test_unknown_column_is_an_analysis_error_at_its_line(spark) -> None:
    exc = spark_error(spark, "SELECT id,\n  nope\nFROM range(3)")
    error = translate(exc, functions=["digits_predict"])
    assert error is not None
    assert error.code == "sql.analysis"
    assert error.message.startswith("[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function "
                                    "parameter with name `nope` cannot be resolved.")
    assert "model functions" not in error.message  # the hint is for unknown functions only
    assert sql_line(exc) == 2


def test_syntax_error_is_sql_syntax_at_its_line(spark) -> None:
    exc = spark_error(spark, "SELECT id\nFROM range(3)\nWHERE id = = 1")
    error = translate(exc)
    assert error is not None
    assert error.code == "sql.syntax"
    assert error.message.startswith("SQL syntax error: [PARSE_SYNTAX_ERROR] Syntax error at or near '='.")
    assert sql_line(exc) == 3


def test_a_failure_while_running_is_sql_failed(spark) -> None:
    error = translate(spark_error(spark, "SELECT 1 / (id - id) FROM range(3)"))
    assert error is not None
    assert error.code == "sql.failed"
    assert error.message.startswith("query failed: [DIVIDE_BY_ZERO] Division by zero.")
