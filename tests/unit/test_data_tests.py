"""Data test declarations without Spark: the digits example's schema.yml becomes one query per
test, and a misspelt test, a missing argument or an unknown node is an error at its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlinfer import Project
from sqlinfer.errors import ConfigError


def test_the_digits_schema_becomes_one_query_per_test(digits_models: Path) -> None:
    tests = {t.name: t for t in Project.load(digits_models).data_tests()}
    assert len(tests) == 11
    # The node calls digits_scores; the vocabulary is its labels.
    vocabulary = tests["label_in_vocabulary(digit_predictions.predicted)"]
    assert vocabulary.failing_sql == ("SELECT * FROM `default`.`digit_predictions` WHERE `predicted` IS NOT NULL AND "
                                      "`predicted` NOT IN ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')")
    accuracy = tests["accuracy_at_least(digit_predictions.predicted_index)"]
    assert accuracy.allowed_sql == ("SELECT CAST(floor(0.050000000000000044 * count(*)) AS BIGINT) "
                                    "FROM `default`.`digit_predictions`")
    assert tests["max_null_fraction(digit_predictions.score)"].severity == "warn"
    assert "abs(aggregate(`probabilities`, CAST(0 AS DOUBLE), (acc, x) -> acc + x) - 1) > 0.0001" in tests[
        "probabilities_sum_to_one(digit_predictions.probabilities)"].failing_sql
    singular = tests["every_image_scored"]
    assert (singular.node, singular.refs, singular.severity) == (None, frozenset({"digit_predictions"}), "error")
    assert "LEFT ANTI JOIN `default`.`digit_predictions` AS p" in singular.failing_sql


@pytest.mark.parametrize(("change", "message"), [
    (("tests: [not_null, unique]", "tests: [not_null, uniqe]"),
     "unknown test 'uniqe' (did you mean 'unique'?)"),
    (("accuracy_at_least: {label: label, min: 0.95}", "accuracy_at_least: {label: label}"),
     "test accuracy_at_least needs min"),
    (("accepted_values: {values:", "accepted_values: {vals:"),
     "test accepted_values needs values"),
    (("  - name: digit_predictions_incremental", "  - name: digit_predictions_incrementl"),
     "`digit_predictions_incrementl` is no node or seed of the project (did you mean "
     "'digit_predictions_incremental'?)"),
    (("        tests: [not_null, unique]", "        tests: [expression]"),
     "test expression needs expression"),
])
def test_a_bad_declaration_is_an_error_at_its_line(digits_models: Path, change: tuple[str, str], message: str) -> None:
    schema = digits_models / "sql" / "schema.yml"
    text = schema.read_text()
    assert change[0] in text
    schema.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as info:
        Project.load(digits_models).data_tests()
    assert info.value.code == "test.bad_declaration"
    assert message in info.value.message
    assert info.value.path == str(schema)
    wanted = change[1].splitlines()[-1].split(":")[0].strip(" -")
    lines = schema.read_text().splitlines()
    assert wanted in lines[info.value.line - 1], (info.value.line, lines[info.value.line - 1])
