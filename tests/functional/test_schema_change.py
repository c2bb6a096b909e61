"""An incremental node whose SELECT changes its columns, built with real Spark: each
`on_schema_change` mode and the table it leaves, and a model whose output kind changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import own_database, own_nodes

from sqlinfer import Project

pytestmark = pytest.mark.spark

FIRST = """{{ config(materialized='incremental', unique_key='path'%s) }}
SELECT path, label, digits_predict(content).index AS pred
FROM {{ source('digits_images') }} WHERE split = 'test' AND label = 0
"""
# One column added (score), one removed (label), one changed (pred: int -> string); label 1 rows are new.
SECOND = """{{ config(materialized='incremental', unique_key='path'%s) }}
SELECT path, CAST(digits_predict(content).index AS STRING) AS pred, digits_predict(content).score AS score
FROM {{ source('digits_images') }} WHERE split = 'test' AND label <= 1
"""


def _project(root: Path, sql: str, mode: str | None = None) -> Project:
    (root / "sql" / "scores.sql").write_text(sql % (f", on_schema_change='{mode}'" if mode else ""))
    return Project.load(root)


@pytest.fixture()
def built(spark, digits_copy: Path) -> tuple[Path, str]:
    database = own_database(digits_copy)
    own_nodes(digits_copy)
    (node,) = _project(digits_copy, FIRST).build(spark).nodes
    assert (node.status, node.rows) == ("success", 45), node.message
    return digits_copy, f"{database}.scores"


def _types(spark, table: str) -> dict[str, str]:
    return {f.name: f.dataType.simpleString() for f in spark.table(table).schema.fields}


def _rows(spark, table: str) -> list[tuple]:
    return sorted(tuple(r) for r in spark.table(table).collect())


def test_fail_is_the_default_and_leaves_the_table_as_it_was(spark, built: tuple[Path, str]) -> None:
    root, table = built
    before = _rows(spark, table)
    (node,) = _project(root, SECOND).build(spark).nodes
    assert node.status == "error"
    assert node.message == (
        f"{root / 'sql' / 'scores.sql'}: the SELECT's columns no longer match the table's (added score (float); "
        "removed label; changed pred (int -> string)); the table is unchanged. Set "
        "config(on_schema_change='sync_all_columns'), or rebuild it with --full-refresh [build.schema_change]")
    assert spark.table(table).columns == ["path", "label", "pred"]
    assert _rows(spark, table) == before


def test_append_new_columns_adds_them_and_keeps_the_old_ones(spark, built: tuple[Path, str]) -> None:
    root, table = built
    first = {r.path: r for r in spark.table(table).collect()}
    # A changed type cannot be appended: this mode still fails on it ...
    (node,) = _project(root, SECOND, "append_new_columns").build(spark).nodes
    assert node.status == "error" and "changed pred (int -> string)" in node.message
    # ... so keep pred an int: score is added, label (no longer selected) stays.
    (node,) = _project(root, SECOND.replace("CAST(digits_predict(content).index AS STRING)",
                                            "digits_predict(content).index"), "append_new_columns").build(spark).nodes
    assert (node.status, node.action, node.rows, node.rows_scored) == ("success", "appended", 46, 46), node.message
    assert node.message == "schema change (append_new_columns): added score (float); removed label"
    assert spark.table(table).columns == ["path", "label", "pred", "score"]
    rows = {r.path: r for r in spark.table(table).collect()}
    assert len(rows) == 91
    old, new = [r for p, r in rows.items() if p in first], [r for p, r in rows.items() if p not in first]
    assert all(r.score is None and r.label == 0 and r.pred == first[r.path].pred for r in old)
    assert all(r.label is None and 0 < r.score <= 1 for r in new) and len(new) == 46


def test_sync_all_columns_rewrites_the_table_with_the_selects_columns(spark, built: tuple[Path, str]) -> None:
    root, table = built
    first = {r.path: r.pred for r in spark.table(table).collect()}
    (node,) = _project(root, SECOND, "sync_all_columns").build(spark).nodes
    assert (node.status, node.action, node.rows, node.rows_scored) == ("success", "appended", 46, 46), node.message
    assert node.message == ("schema change (sync_all_columns): added score (float); removed label; "
                            "changed pred (int -> string)")
    assert spark.table(table).columns == ["path", "pred", "score"]
    assert _types(spark, table) == {"path": "string", "pred": "string", "score": "float"}
    rows = {r.path: r for r in spark.table(table).collect()}
    assert len(rows) == 91
    assert all(rows[p].pred == str(pred) and rows[p].score is None for p, pred in first.items())
    assert all(r.score is not None for p, r in rows.items() if p not in first)


def test_a_model_whose_output_changes_rebuilds_instead_of_mixing(spark, built: tuple[Path, str]) -> None:
    root, table = built
    models = root / "models.yml"
    models.write_text(models.read_text().replace("output: label", "output: topk\n    k: 2"))
    sql = FIRST.replace("digits_predict(content).index AS pred", "digits_predict(content) AS pred")
    (node,) = _project(root, sql).build(spark).nodes
    assert (node.status, node.action, node.rows) == ("success", "full refresh", 45), node.message
    assert "model function digits_predict changed" in node.message
    assert _types(spark, table)["pred"] == "array<struct<label:string,index:int,score:float>>"
    assert all(len(r.pred) == 2 for r in spark.table(table).collect())
