"""Data tests on projects/digits (its sql/schema.yml and tests/every_image_scored.sql), with real
Spark: they pass on the example; planted bad rows make exactly the expected tests fail with their
failing-row counts; an error-severity failure during a build skips the node's descendants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import own_database

from sqlinfer import Project

pytestmark = pytest.mark.spark

DIGITS_TESTS = ["expression(digit_predictions)", "not_null(digit_predictions.path)",
                "unique(digit_predictions.path)", "label_in_vocabulary(digit_predictions.predicted)",
                "accepted_values(digit_predictions.predicted)", "accuracy_at_least(digit_predictions.predicted_index)",
                "max_null_fraction(digit_predictions.score)",
                "probabilities_sum_to_one(digit_predictions.probabilities)",
                "unique(digit_predictions_incremental.path)",
                "relationships(digit_predictions_incremental.path)", "every_image_scored"]


def test_the_digits_tests_pass_then_fail_exactly_on_planted_rows(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    lines: list[str] = []
    built = Project.load(digits_copy).build(spark, report=lines.append)
    assert built.success, [n.message for n in built.nodes]
    ran = [t for n in built.nodes for t in n.tests] + built.tests
    assert sorted(t.name for t in ran) == sorted(DIGITS_TESTS)
    assert all(t.status == "pass" for t in ran)
    assert "  PASS  unique(digit_predictions.path)" in lines

    # A row without a path (whose probabilities add up to 1.1), and one whose label is no digit (and
    # whose score and probabilities are NULL: an unreadable image).
    spark.sql(f"INSERT INTO {database}.digit_predictions VALUES "
              "(NULL, 'test', 3, '3', 3, CAST(0.9 AS FLOAT), array(0.2F, 0.9F)), "
              "('planted.png', 'test', 3, 'ten', 3, NULL, NULL)")
    lines.clear()
    result = Project.load(digits_copy).test(spark, report=lines.append)
    failed = {t.name: t.failures for t in result.tests if t.status != "pass"}
    assert failed == {"not_null(digit_predictions.path)": 1, "label_in_vocabulary(digit_predictions.predicted)": 1,
                      "accepted_values(digit_predictions.predicted)": 1, "expression(digit_predictions)": 1,
                      "probabilities_sum_to_one(digit_predictions.probabilities)": 1}
    assert not result.success
    vocabulary = next(t for t in result.tests if t.name.startswith("label_in_vocabulary"))
    assert vocabulary.sample[0]["path"] == "planted.png" and vocabulary.sample[0]["predicted"] == "ten"
    schema = digits_copy / "sql" / "schema.yml"
    line = schema.read_text().splitlines().index("          - label_in_vocabulary            # the labels of "
                                                 "digits_scores, the model the node calls") + 1
    assert any(text.startswith(f"  FAIL  label_in_vocabulary(digit_predictions.predicted): 1 failing rows "
                               f"({schema}:{line}), e.g. path=planted.png, split=test, label=3, predicted=ten")
               for text in lines), lines
    # The NULL score is within max_null_fraction (a warning test anyway), and the results are on disk.
    results = json.loads((digits_copy / "target" / "run_results.json").read_text())
    assert {t["name"]: t["status"] for t in results["tests"]}["max_null_fraction(digit_predictions.score)"] == "pass"
    assert results["success"] is False


def test_an_error_severity_failure_skips_the_descendants(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    models = digits_copy / "models.yml"
    models.write_text(models.read_text().replace('labels: ["0",', 'labels: ["zero",'))  # no longer a digit
    result = {n.name: n for n in Project.load(digits_copy).build(spark).nodes}
    zeros = spark.sql(f"SELECT count(*) FROM {database}.digit_predictions WHERE predicted_index = 0").first()[0]
    assert zeros > 150
    node = result["digit_predictions"]
    assert node.status == "error" and node.rows == 1797  # built, then failed by its tests
    assert {t.name: (t.status, t.failures) for t in node.tests if t.status != "pass"} == {
        "expression(digit_predictions)": ("fail", zeros),
        "accepted_values(digit_predictions.predicted)": ("fail", zeros)}
    assert node.message == (f"2 data tests failed: expression(digit_predictions) ({zeros:,} rows), "
                            f"accepted_values(digit_predictions.predicted) ({zeros:,} rows)")
    assert [result[n].status for n in ("accuracy", "confusion_matrix")] == ["skipped", "skipped"]
    assert result["digit_predictions_incremental"].status == "success"  # not downstream of it


PROBABILITY_TESTS = """\
  - name: probs
    columns:
      - name: p
        tests: [probabilities_sum_to_one]
      - name: q
        tests:
          - probabilities_sum_to_one: {tolerance: 0.2, severity: warn}
"""


def test_probabilities_sum_to_one_and_a_warning_severity(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    (digits_copy / "sql" / "probs.sql").write_text(
        "{{ config(materialized='table') }}\nSELECT path, s.probabilities AS p, s.probabilities AS q\n"
        "FROM (SELECT path, digits_scores(content) AS s FROM {{ source('digits_images') }} WHERE split = 'test')\n")
    schema = digits_copy / "sql" / "schema.yml"
    schema.write_text(schema.read_text() + PROBABILITY_TESTS)
    (node,) = Project.load(digits_copy).build(spark, select=("probs",)).nodes
    assert node.status == "success" and [(t.name, t.status) for t in node.tests] == [
        ("probabilities_sum_to_one(probs.p)", "pass"), ("probabilities_sum_to_one(probs.q)", "pass")]

    spark.sql(f"INSERT INTO {database}.probs VALUES ('a.png', array(0.5F, 0.6F), array(0.5F, 0.8F)), "
              "('b.png', array(0.5F, 0.5F), array(1.0F))")
    result = Project.load(digits_copy).test(spark, select=("probs",))
    assert {t.name: (t.status, t.failures) for t in result.tests} == {
        "probabilities_sum_to_one(probs.p)": ("fail", 1),  # 1.1
        "probabilities_sum_to_one(probs.q)": ("warn", 1)}  # 1.3 is beyond 0.2; 1.0 is not
    assert not result.success


def test_a_test_reading_a_node_without_a_table_is_skipped(spark, digits_copy: Path) -> None:
    own_database(digits_copy)
    lines: list[str] = []
    result = Project.load(digits_copy).build(spark, select=("digit_predictions_incremental",), report=lines.append)
    (node,) = result.nodes
    assert result.success and node.status == "success"
    assert {t.name: (t.status, t.message) for t in node.tests} == {
        "unique(digit_predictions_incremental.path)": ("pass", ""),
        "relationships(digit_predictions_incremental.path)": ("skip", "digit_predictions not built")}
    assert "  SKIP  relationships(digit_predictions_incremental.path) (digit_predictions not built)" in lines
    assert result.tests == []  # every_image_scored reads digit_predictions, which this build did not select
